"""`bench calibrate --compare` on scripted compares (fast): the plan interleaves A/A and slowed compares,
false alarms and detections are counted per case, and the JSON, table and plot are written all or nothing;
plus the command line's refusals before anything is measured."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bench.calibrate import compare as cc
from bench.cli.main import main
from bench.compare import coordinator
from bench.compare.judge import judge
from bench.compare.policy import DEFAULT_THRESHOLD
from cosmos3.errors import InputError
from tests.compare.helpers import paired, record


def scripted(make_env, *, false_alarm_at=(), processes=4):
    """A compare function: two cases, 4 pairs of 4 trials; A/A ratio 1, slowed ratio 1 + slowdown, except
    the A/A compares numbered in false_alarm_at, whose first case is 8% slower in every pair."""
    calls = []

    def run(slowdown, index):
        calls.append((slowdown, index))
        ratio = 1.0 + (slowdown or 0.0) + (0.08 if index in false_alarm_at else 0.0)
        pairs = []
        for j, strategy in enumerate(("single_frame", "expand")):
            p = paired(strategy, ratio=ratio if j == 0 or slowdown else 1.0, noise=0.005, trials=16, seed=index * 7 + j)
            pairs.append(dataclasses.replace(p, process=tuple(i % processes for i in range(16))))
        rec = dataclasses.replace(record(pairs, make_env=make_env), processes=processes)
        return judge(rec)

    return run, calls


def test_counts_false_alarms_and_detections_per_case_and_writes_json_table_and_plot(tmp_path, make_env):
    run, calls = scripted(make_env, false_alarm_at={0})
    ticks = iter(range(100))
    cal = cc.run_calibration(run, aa_runs=3, slowdowns=(0.1, 0.2), runs_per_slowdown=2, clock=lambda: next(ticks),
                             command="python -m bench calibrate --compare -k x", load="quiet", progress=lambda _: None)
    assert [s for s, _ in calls] == [None, 0.1, 0.2, None, 0.1, 0.2, None]  # interleaved
    first, second = cal.cases  # sorted by name: expand, single_frame
    assert second.name.endswith("single_frame-1280x720-33f]") and second.false_alarms == 1
    assert first.false_alarms == 0 and cal.aa_compares_failed == 1
    assert second.detections == {"0.1": 2, "0.2": 2} and second.injected_runs == {"0.1": 2, "0.2": 2}
    assert second.aa_ratio_max > 1.05 and cal.processes == 4 and cal.wall_s == 1
    md = cc.write(cal, tmp_path / "cal")
    assert md.name == cc.COMPARE_CALIBRATION_MD
    text = md.read_text()
    assert "| `latent_prep[single_frame-1280x720-33f]` | 1 |" in text and "2/2 | 2/2 |" in text
    assert "- load: quiet" in text
    data = json.loads((tmp_path / "cal" / cc.COMPARE_CALIBRATION_JSON).read_text())
    assert data["aa_runs"] == 3 and data["cases"][1]["false_alarms"] == 1
    assert (tmp_path / "cal" / cc.COMPARE_CALIBRATION_PNG).stat().st_size > 1000
    with pytest.raises(InputError, match="never overwritten"):
        cc.write(cal, tmp_path / "cal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal"]  # no staging folder left


def test_parse_slowdowns():
    assert cc.parse_slowdowns("0.1,0.05") == (0.1, 0.05)
    for bad in ("", "x", "0", "-0.1", "nan"):
        with pytest.raises(InputError, match="slowdowns"):
            cc.parse_slowdowns(bad)


@pytest.mark.parametrize(("args", "message"), [
    (["--slowdowns", "0"], "slowdowns"),
    (["--aa-runs", "0"], "needs --aa-runs >= 1"),
    ([], "selects its cases with -k"),
    (["-k", "latent_prep", "--inject-slowdown", "*=0.1"], "other negative controls are refused"),
    (["-k", "latent_prep", "--processes", "0"], "processes"),
    (["-k", "latent_prep", "--processes", "2"], "one degree of freedom"),
])
def test_the_command_line_refuses_bad_input_before_measuring(tmp_path, capsys, args, message):
    if "-k" not in args and message != "selects its cases with -k":
        args = [*args, "-k", "latent_prep"]
    code = main(["calibrate", "--compare", "--preset", "tiny", "--results-dir", str(tmp_path), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_runs_the_compares_it_plans(tmp_path, monkeypatch, make_env, capsys):
    run, _calls = scripted(make_env)
    seen = []

    def fake_measure_run(settings):
        seen.append(settings)
        slowdown = settings.controls.slowdowns.get("*")
        return run(slowdown, len(seen) - 1).record, {}

    monkeypatch.setattr(coordinator, "measure_run", fake_measure_run)
    code = main(["calibrate", "--compare", "--preset", "tiny", "--results-dir", str(tmp_path), "-k",
                     "latent_prep and single_frame", "--aa-runs", "2", "--runs-per-size", "1", "--processes", "3",
                     "--calibration-dir", str(tmp_path / "cal")])
    assert code == 0, capsys.readouterr().err
    assert [s.controls.slowdowns for s in seen] == [{}, {"*": 0.1}, {}]
    assert {s.processes for s in seen} == {3} and {s.criteria.threshold for s in seen} == {DEFAULT_THRESHOLD}
    data = json.loads((tmp_path / "cal" / cc.COMPARE_CALIBRATION_JSON).read_text())
    assert data["aa_runs"] == 2 and np.isfinite(data["wall_s"])
