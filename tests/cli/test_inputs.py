"""`python -m bench` checks every option and input before it creates a folder or measures a round."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import pytest
import torch

from bench.cli import child as cli_child
from bench.cli.child import failed_cases, read_benchmark_json
from bench.cli.main import main
from bench.cli.run import baseline_path
from bench.core.records import save_run
from bench.measure.controls import CONTROLS_ENV, RoundPolicy, RunControls
from cosmos3.errors import InputError
from tests.repo import REPO


@pytest.fixture(autouse=True)
def never_measure(monkeypatch):
    """Every test here must be refused before the benchmark child would start."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("measured although an input was bad")

    monkeypatch.setattr(cli_child, "run_benchmarks", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "-1"], "latency_threshold: must be >= 0"),
        (["--threshold", "nan"], "latency_threshold: must be >= 0"),
        (["--alpha", "0"], "alpha: must lie strictly between 0 and 1"),
        (["--override", "e2e"], "override: must read PATTERN=NUMBER"),
        (["--override", "e2e[*]=inf"], "override: must read PATTERN=NUMBER with a finite number"),
        (["--inject-slowdown", "x=0"], "inject_slowdown: needs 0 < FRACTION <= 10"),
        (["--inject-slowdown", "x"], "inject_slowdown: must read PATTERN=NUMBER"),
        (["--inject-slowdown", "x=nan"], "inject_slowdown: must read PATTERN=NUMBER with a finite number"),
        (["--rounds", "1,2"], "rounds: must read WARMUP,MIN,MAX,TARGET_MS"),
        (["--rounds", "2,5,60,nan"], "rounds: needs a finite TARGET_MS > 0"),
        (["--rounds", "2,5,60,0"], "rounds: needs a finite TARGET_MS > 0"),
        (["--rounds", "1,1,1,1"], "rounds: needs 5 <= MIN <= MAX"),
        (["--rounds", "2,9,6,100"], "rounds: needs 5 <= MIN <= MAX"),
        (["--rounds", "0,5,5,100"], "rounds: needs WARMUP >= 1"),
        (["--dit-layers", "0"], "dit_layers: must be >= 1"),
        (["--run-id", "../escape"], "run_id: must be one folder name"),
        (["--run-id", ""], "run_id: must be one folder name"),
        (["--weights-dir", "."], "weights_dir: must be a local diffusers folder with vae/config.json"),
        (["--require-baseline"], "baseline: no baseline for"),
        (["--noise-k", "-1"], "noise_k: must be >= 0"),
        (["--min-speedup", "0.5"], "min_speedup: must be >= 1"),
        # A pattern that names nothing would measure less than asked, or a control that changes nothing.
        (["--case", "e2e[single-frame-*]"], "case: matches no case of preset tiny, grid default (got 'e2e[single-frame-*]')"),
        (["-k", "test_vae_encode and expand"],
         "case: selects no case of preset tiny, grid default, with -k 'test_vae_encode and expand' (got [])"),
        (["--inject-slowdown", "latent_prep[single-frame-*]=0.1"],
         "inject_slowdown: matches none of the 37 cases this run measures (got 'latent_prep[single-frame-*]')"),
        (["-k", "test_vae_encode", "--inject-gpu-work", "e2e[*]=0.1"],
         "inject_gpu_work: matches none of the 4 cases this run measures (got 'e2e[*]')"),
        (["--case", "vae_encode[*]", "--inject-sync", "latent_prep[*]"],
         "inject_sync: matches none of the 4 cases this run measures (got 'latent_prep[*]')"),
        (["--case", "vae_encode[*]", "--inject-kernel", "e2e[*]"],
         "inject_kernel: matches none of the 4 cases this run measures (got 'e2e[*]')"),
        (["-k", "test_vae_encode", "--revert-single-frame"],
         "revert_single_frame: needs a single_frame case among the 4 cases this run measures (got True)"),
        (["--case", "latent_prep[expand-*]", "--revert-first-frame"],
         "revert_first_frame: needs a first_frame_2d case among the 6 cases this run measures (got True)"),
    ],
)
def test_bad_options_exit_2_before_anything_exists(tmp_path, argv, message, capsys):
    results = tmp_path / "results"
    code = main(["run", "--preset", "tiny", "--results-dir", str(results), "--baselines-dir", str(tmp_path / "b"),
                 *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not results.exists()  # no folder made, no run id used up


def test_results_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", "--preset", "tiny", "--results-dir", str(tmp_path / "file" / "sub")]) == 2
    assert "results_dir: must be a folder that can be created, but" in capsys.readouterr().err


def test_results_dir_that_is_not_writable(tmp_path, capsys, monkeypatch):
    # Root may write anywhere, so the read-only folder is simulated where the rule reads it.
    monkeypatch.setattr("cosmos3.paths.os.access", lambda path, mode: False)
    assert main(["run", "--preset", "tiny", "--results-dir", str(tmp_path / "r")]) == 2
    assert "results_dir: must be a folder we can write to" in capsys.readouterr().err


def test_an_existing_baseline_is_refused_before_measuring(tmp_path, make_case, make_run, capsys):
    from bench.core.environment import device_identity

    _, slug = device_identity(torch.device("cpu"))
    save_run(make_run([make_case()], preset="tiny"), tmp_path / slug / "tiny.json")
    assert main(["baseline", "--preset", "tiny", "--baselines-dir", str(tmp_path),
                 "--results-dir", str(tmp_path / "results")]) == 2
    assert "baseline: file exists; pass --force to replace it" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_no_baseline_from_negative_controls_before_measuring(tmp_path, capsys):
    assert main(["baseline", "--preset", "tiny", "--baselines-dir", str(tmp_path),
                 "--results-dir", str(tmp_path / "results"), "--revert-single-frame"]) == 2
    assert "cannot be recorded with a negative control" in capsys.readouterr().err


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_gate_never_edits_the_run_it_gates(tmp_path, make_case, make_run, capsys):
    run_dir = tmp_path / "run"
    save_run(make_run([make_case()], preset="tiny"), run_dir / "run.json")
    (run_dir / "report").mkdir()
    (run_dir / "report" / "summary.md").write_text("# the committed report\n")
    before = _tree_digest(run_dir)
    assert main(["gate", str(run_dir), "--baselines-dir", str(tmp_path / "none"), "--threshold", "0.5"]) == 0
    after = _tree_digest(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("gate-")} == before
    (new,) = {k.split("/")[0] for k in after if k.startswith("gate-")}
    assert f"report: {run_dir / new / 'summary.md'}" in capsys.readouterr().out
    # An explicit report folder that exists is refused, not written into.
    assert main(["gate", str(run_dir), "--report-dir", str(run_dir / "report")]) == 2
    assert "report_dir: exists; a report is never overwritten" in capsys.readouterr().err
    assert _tree_digest(run_dir / "report") == {"summary.md": before["report/summary.md"]}


def test_corrupt_child_outputs_are_data_errors(tmp_path):
    (tmp_path / "junit.xml").write_text("<testsuite><testcase")
    with pytest.raises(InputError, match="junit_xml: must be well-formed XML"):
        failed_cases(tmp_path / "junit.xml")
    (tmp_path / "pb.json").write_text("{")
    with pytest.raises(InputError, match="pytest_benchmark_json: must be readable JSON"):
        read_benchmark_json(tmp_path / "pb.json")


def test_gate_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["gate", str(tmp_path)]) == 2
    assert "run record: file does not exist" in capsys.readouterr().err


def test_run_controls_cross_the_process_seam_typed():
    controls = RunControls(rounds=RoundPolicy(1, 5, 9, 10.0), slowdowns={"e2e[*]": 0.5},
                               reverted=("single_frame",))
    env = {CONTROLS_ENV: controls.to_env()}
    assert RunControls.from_env(env) == controls
    with pytest.raises(InputError, match="COSMOS3_BENCH_CONTROLS.slowdown: is not a field of RunControls"):
        RunControls.from_env({CONTROLS_ENV: json.dumps({"slowdown": {}})})


def test_reverting_a_strategy_is_a_recorded_negative_control():
    controls = RunControls(reverted=("single_frame", "first_frame_2d"))
    assert controls.strategy_for("single_frame") == "expand"
    assert controls.strategy_for("first_frame_2d") == "single_frame"
    assert controls.strategy_for("expand") == "expand"
    assert controls.active == ("single_frame reverted to expand (diffusers' pipeline: to shipped)", "first_frame_2d reverted to single_frame")
    assert RunControls().strategy_for("first_frame_2d") == "first_frame_2d"


def test_two_gates_in_one_second_get_two_report_folders(tmp_path, make_case, make_run, monkeypatch):
    epoch = time.gmtime(0)
    monkeypatch.setattr(time, "gmtime", lambda *_: epoch)  # the same second, twice
    run_dir = tmp_path / "run"
    save_run(make_run([make_case()], preset="tiny"), run_dir / "run.json")
    for _ in range(2):
        assert main(["gate", str(run_dir), "--baselines-dir", str(tmp_path / "none")]) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == ["gate-19700101-000000", "gate-19700101-000000-2", "run.json"]


def _raw_run(folder: Path, make_case, make_run, **env) -> Path:
    """A run.json written as raw JSON, so that it may hold what no record would let through."""
    from bench.core.records import run_to_dict

    data = run_to_dict(make_run([make_case()], preset="tiny"))
    data["environment"].update(env)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("device_slug", "../../escaped", "must be one folder name"),
    ("device_slug", "/abs/escaped", "must be one folder name"),
    ("device_slug", "..", "must be one folder name"),
    ("device_slug", "x" * 300, "must be one folder name"),
    ("preset", "../../escaped", "must be a known preset"),
    ("preset", "huge", "must be a known preset"),
])
def test_no_record_field_can_write_outside_the_baselines_folder(tmp_path, make_case, make_run, capsys,
                                                                field, value, rule):
    run_dir = _raw_run(tmp_path / "a" / "run", make_case, make_run, **{field: value})
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["baseline", "--from-run", str(run_dir), "--baselines-dir", str(tmp_path / "a" / "bl")]) == 2
    err = capsys.readouterr().err
    assert f"run record {run_dir / 'run.json'}.environment.{field}: {rule}" in err and "Traceback" not in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written, anywhere


def test_a_baseline_path_must_resolve_inside_its_folder(tmp_path):
    (tmp_path / "bl").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "bl" / "cpu-x").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="baselines_dir: must stay inside"):
        baseline_path(tmp_path / "bl", "cpu-x", "tiny")
    with pytest.raises(InputError, match="run.device_slug: must be one folder name"):
        baseline_path(tmp_path / "bl", "a/b", "tiny")


def test_a_merge_refuses_the_same_run_twice(tmp_path, make_case, make_run, capsys):
    """`--from-run R` thrice claimed three runs, zero noise and counters identical in all 3 runs."""
    run = make_run([make_case()], preset="tiny")
    save_run(run, tmp_path / "r" / "run.json")
    bl = tmp_path / "bl"
    argv = ["baseline", "--baselines-dir", str(bl)]
    assert main([*argv, "--from-run", str(tmp_path / "r"), "--from-run", str(tmp_path / "r"),
                 "--from-run", str(tmp_path / "r")]) == 2
    assert "from_run: names the same run folder twice (--from-run #1 and #2)" in capsys.readouterr().err
    (tmp_path / "link").symlink_to(tmp_path / "r")
    assert main([*argv, "--from-run", str(tmp_path / "r"), "--from-run", str(tmp_path / "link")]) == 2
    assert "from_run: names the same run folder twice" in capsys.readouterr().err
    save_run(run, tmp_path / "copy" / "run.json")  # the same samples in another folder
    assert main([*argv, "--from-run", str(tmp_path / "r"), "--from-run", str(tmp_path / "copy")]) == 2
    err = capsys.readouterr().err
    assert "runs[1]: must be another run than runs[0]: the same run twice (the same cases with the same samples_ms" \
        in err
    assert not bl.exists()
    save_run(make_run([make_case(seed=1)], preset="tiny"), tmp_path / "other" / "run.json")
    assert main([*argv, "--from-run", str(tmp_path / "r"), "--from-run", str(tmp_path / "other")]) == 0


@pytest.mark.parametrize("option", ["--threshold", "--device-threshold", "--memory-threshold", "--noise-k",
                                    "--min-speedup", "--min-speedup-2d", "--alpha"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("command", ["run", "gate", "calibrate"])
def test_no_limit_is_infinite(tmp_path, make_case, make_run, capsys, option, value, command):
    """An infinite allowance switches a rule off, an infinite requirement fails every run: both are bad
    input (exit 2), never a pass and never a regression."""
    run_dir = tmp_path / "run"
    save_run(make_run([make_case()], preset="tiny"), run_dir / "run.json")
    head = {"run": ["run", "--preset", "tiny", "--results-dir", str(tmp_path / "results")],
            "gate": ["gate", str(run_dir)],
            "calibrate": ["calibrate", "--preset", "tiny", "--results-dir", str(tmp_path / "results")]}[command]
    assert main([*head, "--baselines-dir", str(tmp_path / "b"), f"{option}={value}"]) == 2
    err = capsys.readouterr().err
    name = {"--threshold": "latency_threshold", "--alpha": "alpha"}.get(option, option[2:].replace("-", "_"))
    assert f"{name}: must" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() and sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


@pytest.mark.parametrize("argv", [["--threshold", "inf"], ["--memory-threshold", "inf"], ["--override", "*=inf"],
                                  ["--alpha", "inf"]])
def test_compare_limits_are_finite(tmp_path, capsys, argv):
    assert main(["compare", "--base", "HEAD", "--preset", "tiny", "--results-dir", str(tmp_path / "r"), *argv]) == 2
    assert "must" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_number_rule():
    from cosmos3.errors import check_number

    assert check_number("x", 0, at_least=0) == 0
    for bad in (True, "1", None, math.inf, math.nan, -1, -math.inf, 10**400):
        with pytest.raises(InputError, match="x: must be"):
            check_number("x", bad, at_least=0)
    with pytest.raises(InputError, match="x: must be an integer"):
        check_number("x", 1.0, integer=True)


def _loop(tmp_path: Path) -> Path:
    loop = tmp_path / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return loop


@pytest.mark.parametrize("case", ["baselines loop (run)", "baselines loop (gate)", "baselines loop (baseline)",
                                  "run id too long", "results name too long", "results in /proc",
                                  "results loop", "report in /proc", "baselines in /proc", "report name too long"])
def test_every_path_error_is_an_input_error(tmp_path, make_case, make_run, capsys, case):
    """A symlink loop, a name too long, an unwritable place (/proc, even for root): exit 2 naming the option."""
    run_dir = tmp_path / "run"
    save_run(make_run([make_case()], preset="tiny"), run_dir / "run.json")
    run = ["run", "--preset", "tiny", "--results-dir", str(tmp_path / "results")]
    argv, field = {
        "baselines loop (run)": ([*run, "--baselines-dir", str(_loop(tmp_path))], "baselines_dir"),
        "baselines loop (gate)": (["gate", str(run_dir), "--baselines-dir", str(_loop(tmp_path))], "baselines_dir"),
        "baselines loop (baseline)": (["baseline", "--preset", "tiny", "--baselines-dir", str(_loop(tmp_path)),
                                       "--results-dir", str(tmp_path / "results")], "baselines_dir"),
        "run id too long": ([*run, "--run-id", "x" * 300], "run_id"),
        "results name too long": (["run", "--preset", "tiny", "--results-dir", str(tmp_path / ("r" * 300))],
                                  "results_dir"),
        "results in /proc": (["run", "--preset", "tiny", "--results-dir", "/proc/x"], "results_dir"),
        "results loop": (["run", "--preset", "tiny", "--results-dir", str(_loop(tmp_path) / "r")], "results_dir"),
        "report in /proc": (["gate", str(run_dir), "--report-dir", "/proc/rep"], "report_dir"),
        "baselines in /proc": (["baseline", "--from-run", str(run_dir), "--baselines-dir", "/proc/bl"],
                               "baselines_dir"),
        "report name too long": (["gate", str(run_dir), "--report-dir", str(tmp_path / ("g" * 300))], "report_dir"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {field}: must" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() and sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


def test_a_symlink_loop_is_not_called_a_file(tmp_path, capsys):
    assert main(["baseline", "--preset", "tiny", "--baselines-dir", str(_loop(tmp_path)),
                 "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "symlink loop" in err and "is a file" not in err


def test_every_repeat_folder_is_checked_before_the_first_is_measured(tmp_path, capsys):
    (tmp_path / "results" / "b-2").mkdir(parents=True)
    assert main(["baseline", "--preset", "tiny", "--repeats", "3", "--run-id", "b", "--baselines-dir",
                 str(tmp_path / "bl"), "--results-dir", str(tmp_path / "results")]) == 2
    assert "run_id: names a results folder that exists" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["b-2"]  # b-1 was never made


def test_the_default_folders_are_the_repository_s():
    """Without --baselines-dir or --results-dir a run reads the committed baselines and writes under results/,
    found from where bench is installed (bench.core.environment.REPO_ROOT), not from the working directory."""
    from bench.cli.options import parse_args

    repo = REPO
    args = parse_args(["run"])
    assert (args.baselines_dir, args.results_dir) == (repo / "baselines", repo / "results")
    assert (args.baselines_dir / "nvidia-h100-80gb-hbm3" / "wan22.json").is_file()
