"""One validation of records for every loader: bad data is refused (exit 2), never gated into a pass."""

from __future__ import annotations

import json
import math
import re

import pytest

from bench.cli.main import main
from bench.core.records import (
    CaseResult,
    CaseSpec,
    load_run,
    merge_runs,
    run_from_dict,
    run_from_pytest_benchmark,
    run_to_dict,
    save_run,
)
from cosmos3.errors import InputError
from tests.repo import DATA, REPO

# The H100 baseline as recorded at schema 1 (2026-11-23), before its latent-prep and e2e cases were retired.
V1_BASELINE = DATA / "h100_wan22_schema1_baseline.json"
CASE = "latent_prep[single_frame-1280x720-81f]"


def _set(path: tuple, value):
    def mutate(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _delete(path: tuple):
    def mutate(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


# (mutation of a valid record, the field the error must name, the rule it must state)
BAD_RECORDS = {
    "nan sample": (_set(("cases", 0, "samples_ms", 3), math.nan), f"cases[{CASE}].samples_ms[3]", "finite and > 0"),
    "inf sample": (_set(("cases", 0, "samples_ms", 0), math.inf), "samples_ms[0]", "finite and > 0"),
    "negative sample": (_set(("cases", 0, "samples_ms", 1), -3.0), "samples_ms[1]", "finite and > 0"),
    "zero sample": (_set(("cases", 0, "samples_ms", 2), 0.0), "samples_ms[2]", "finite and > 0"),
    "no samples": (_set(("cases", 0, "samples_ms"), []), "samples_ms", "at least one sample"),
    "string sample": (_set(("cases", 0, "samples_ms", 0), "10"), "samples_ms[0]", "must be a number"),
    "bool sample": (_set(("cases", 0, "samples_ms", 0), True), "samples_ms[0]", "must be a number"),
    "no cases": (_set(("cases",), []), "cases", "at least one case"),
    "cases not a list": (_set(("cases",), {}), "cases", "must be a list"),
    "schema 0": (_set(("schema_version",), 0), "schema_version", "must be one of [1, 2]"),
    "schema -5": (_set(("schema_version",), -5), "schema_version", "must be one of [1, 2]"),
    "schema true": (_set(("schema_version",), True), "schema_version", "must be one of [1, 2]"),
    "schema '2'": (_set(("schema_version",), "2"), "schema_version", "must be one of [1, 2]"),
    "environment null": (_set(("environment",), None), "environment", "must be a JSON object"),
    "environment missing a field": (_delete(("environment", "device_slug")), "environment.device_slug", "is required"),
    "environment mistyped": (_set(("environment", "commit_dirty"), "yes"), "environment.commit_dirty",
                             "must be true or false"),
    "unknown environment key": (_set(("environment", "gpu"), "H100"), "environment.gpu", "is not a field"),
    "unknown case key": (_set(("cases", 0, "extra"), {}), f"cases[{CASE}].extra", "is not a field"),
    "stage samples mistyped": (_set(("cases", 0, "stage_samples_ms"), [1, 2]), "stage_samples_ms", "must be an object"),
    "stage sample nan": (_set(("cases", 0, "stage_samples_ms"), {"denoising": [1.0, math.nan]}),
                         "stage_samples_ms.denoising[1]", "finite and >= 0"),
    "peak memory mistyped": (_set(("cases", 0, "peak_mem_gib"), "2 GiB"), "peak_mem_gib", "must be a number"),
    "peak memory negative": (_set(("cases", 0, "peak_mem_gib"), -1.0), "peak_mem_gib", "finite and >= 0"),
    "run median nan": (_set(("cases", 0, "run_medians_ms"), [10.0, math.nan]), "run_medians_ms[1]", "finite and > 0"),
    "equivalence mistyped": (_set(("cases", 0, "equivalence"), {"equivalent": "yes"}), "equivalence.equivalent",
                             "must be true or false"),
    "spec width 0": (_set(("cases", 0, "spec", "width"), 0), "spec.width", "must be >= 1"),
    "name disagrees with spec": (_set(("cases", 0, "name"), "e2e[x]"), "name", "must match its spec"),
    "duplicate case": (lambda d: d["cases"].append(dict(d["cases"][0])), "cases", "must name each case once"),
}


@pytest.fixture
def valid(make_case, make_run):
    return run_to_dict(make_run([make_case(peak_mem_gib=2.0), make_case("vae_encode", None)]))


@pytest.mark.parametrize("what", BAD_RECORDS)
def test_bad_records_are_refused_naming_the_file_case_and_field(tmp_path, valid, what):
    mutate, field, rule = BAD_RECORDS[what]
    mutate(valid)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(valid))  # json writes NaN and Infinity, as a careless tool would
    with pytest.raises(InputError) as err:
        load_run(path, what="baseline")
    message = str(err.value)
    assert message.startswith(f"baseline {path}"), message
    assert field in message and rule in message, message


def test_records_cannot_even_be_built_with_bad_samples(make_case):
    spec = CaseSpec("latent_prep", 64, 48, 9, "single_frame")
    for bad in ((), (1.0, math.nan), (-1.0,), (0.0,)):
        with pytest.raises(InputError, match="samples_ms"):
            CaseResult(spec=spec, samples_ms=bad)


def test_the_committed_schema_1_baseline_still_loads_and_upgrades():
    baseline = load_run(V1_BASELINE)
    case = baseline.by_name()[CASE]
    assert case.equivalence is not None and case.equivalence.bitwise and case.equivalence.reference == "expand"
    assert len(case.warmup_ms) == 2 and len(case.run_medians_ms) == 5
    assert run_from_dict(run_to_dict(baseline)) == baseline  # and survives a round trip at schema 2


def test_from_run_and_merge_refuse_bad_runs(tmp_path, valid):
    valid["cases"][0]["samples_ms"][0] = math.nan
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps(valid))
    assert main(["baseline", "--from-run", str(tmp_path / "r"), "--baselines-dir", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()


def test_pytest_benchmark_json_is_read_by_the_same_rules(valid):
    env = valid["environment"]

    def data(info, seconds):
        return {"machine_info": {"cosmos3_environment": env},
                "benchmarks": [{"name": "t", "stats": {"data": seconds}, "extra_info": info}]}

    spec = {"benchmark": "vae_encode", "width": 96, "height": 64, "num_frames": 1, "strategy": None}
    assert run_from_pytest_benchmark(data({"spec": spec}, [0.01, 0.02])).cases[0].samples_ms == (10.0, 20.0)
    with pytest.raises(InputError, match=r"benchmarks\[t\].extra_info.samples_ms\[1\]: must be finite and > 0"):
        run_from_pytest_benchmark(data({"spec": spec}, [0.01, math.nan]))
    with pytest.raises(InputError, match=r"extra_info.injected_slowdown: is not a field of CaseResult"):
        run_from_pytest_benchmark(data({"spec": spec, "injected_slowdown": 0.1}, [0.01]))
    with pytest.raises(InputError, match=r"extra_info.spec: is required"):
        run_from_pytest_benchmark(data({}, [0.01]))
    with pytest.raises(InputError, match="cases: must hold at least one case"):
        run_from_pytest_benchmark({"machine_info": {"cosmos3_environment": env}, "benchmarks": []})


def test_merge_keeps_records_valid(make_case, make_run):
    merged = merge_runs([make_run([make_case(seed=s)]) for s in range(3)])
    assert all(math.isfinite(m) and m > 0 for m in merged.cases[0].run_medians_ms)


@pytest.mark.parametrize("side", ["baseline", "run"])
def test_a_nan_sample_can_no_longer_hide_a_10x_regression(tmp_path, make_case, make_run, capsys, side):
    """Issue 8's first finding: one NaN made the gate pass a run 10x slower. Now it exits 2."""
    fast = make_run([make_case(median_ms=10.0, seed=s) for s in range(1)])
    slow = make_run([make_case(median_ms=100.0, seed=9)])
    (tmp_path / "run").mkdir()
    save_run(slow, tmp_path / "run" / "run.json")
    save_run(fast, tmp_path / "baseline.json")
    argv = ["gate", str(tmp_path / "run"), "--baseline", str(tmp_path / "baseline.json"),
            "--report-dir", str(tmp_path / "report")]
    assert main(argv) == 1  # the control: without a NaN the 10x slowdown fails
    assert "latency regression" in capsys.readouterr().out
    target = tmp_path / ("baseline.json" if side == "baseline" else "run/run.json")
    data = json.loads(target.read_text())
    data["cases"][0]["samples_ms"][4] = math.nan
    target.write_text(json.dumps(data))
    argv[-1] = str(tmp_path / "report2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "samples_ms[4]: must be finite and > 0 (got nan)" in err
    assert not (tmp_path / "report2").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_repeated_key_is_an_error_not_the_last_value(tmp_path, make_case, make_run, capsys, where):
    """A second samples_ms before the real one made the gate pass; after it, a +5739% regression."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_run(make_run([make_case(median_ms=10.0)], preset="tiny"), tmp_path / "baseline.json")
    save_run(make_run([make_case(median_ms=10.0, seed=1)], preset="tiny"), run_dir / "run.json")
    text = (run_dir / "run.json").read_text()
    fake = '"samples_ms": [1.0, 1.0, 1.0, 1.0, 1.0],'
    text = text.replace('"samples_ms":', fake + ' "samples_ms":', 1) if where == "before" else \
        text.replace('"warmup_ms":', fake.replace("1.0", "600.0") + ' "warmup_ms":', 1)
    (run_dir / "run.json").write_text(text)
    code = main(["gate", str(run_dir), "--baseline", str(tmp_path / "baseline.json"),
                 "--report-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert (f"run record {run_dir / 'run.json'}.cases[0]: must not repeat a key: 'samples_ms' appears more than "
            "once in object cases[0]") in err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(("text", "field", "key"), [
    ('{"a": 1, "a": 2}', "f", "a"),
    ('{"environment": {"x": 1}, "cases": [{}, {}, {}, {"n": 1, "n": 1}]}', "f.cases[3]", "n"),
    ('{"e": {"k": [0, {"z": 1, "z": 2}]}}', "f.e.k[1]", "z"),
])
def test_every_loader_reads_json_strictly(text, field, key):
    from cosmos3 import strict_json

    with pytest.raises(InputError) as info:
        strict_json.loads(text, "f")
    assert (info.value.field, info.value.value) == (field, key)
    assert strict_json.loads('{"a": [1, {"b": 2}]}', "f") == {"a": [1, {"b": 2}]}


def test_no_loader_reads_json_leniently():
    """One JSON reader for every loader: no bare json.load/json.loads left in the packages."""
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "bench").rglob("*.py"))
                 + sorted((REPO / "cosmos3").rglob("*.py")) if p.name != "strict_json.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(?<!strict_)json\.load", line)]
    assert offenders == []
