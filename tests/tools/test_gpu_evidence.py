"""tools/gpu-evidence.sh: every step's commands parse and select real cases, so that a scarce GPU call
(one 10-minute call per drawn task) never ends on a typo. DRY_RUN=1 prints the commands and runs none."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bench.cli.options import parse_args, run_controls
from bench.core import cases
from bench.core.environment import REPO_ROOT
from bench.core.records import matches
from tests.repo import REPO, load_tool

SCRIPT = REPO / "tools" / "gpu-evidence.sh"
TEXT = SCRIPT.read_text()
STEPS = re.findall(r"\[([a-z0-9_-]+)\]=\d+", TEXT[TEXT.index("declare -A EST"):TEXT.index("step=${1")])
HEADER = TEXT[:TEXT.index("set -uo pipefail")]
SESSIONS = {"bench": "run", "compare": "compare", "calibrate": "calibrate"}


def dry(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "DRY_RUN": "1", "EVIDENCE": str(tmp_path / "evidence"), **env})


def tool(name: str):
    return load_tool(name)


def check(argv: list[str]) -> None:
    """Parse one printed command as its program would; for a benchmark run, select its cases on the GPU
    preset as the child will, and check that each negative control applies to one of them."""
    if argv[:4] == ["python3", "-m", "nox", "-s"]:
        assert argv[5] == "--", argv
        args = parse_args([SESSIONS[argv[4]], *argv[6:]])
    elif argv[:3] == ["python3", "-m", "bench"]:
        args = parse_args(argv[3:])
    elif argv[:3] == ["python3", "-m", "cosmos3"]:
        from cosmos3 import __main__ as cosmos3_cli

        cosmos3_cli.validate_reporting_warnings(cosmos3_cli.parse_args(argv[3:]))
        return
    elif argv[:2] == ["python3", "tools/first_frame_speed.py"]:
        tool("first_frame_speed.py").parse_args(argv[2:])
        return
    elif argv[:2] == ["python3", "tools/e2e_stage_counters.py"]:
        tool("e2e_stage_counters.py").parse_args(argv[2:])
        return
    elif argv[:2] == ["python3", "tools/diffusers_crosscheck.py"]:
        tool("diffusers_crosscheck.py").parse_args(argv[2:])
        return
    elif argv[0] == "env" and argv[2:4] == ["python3", "tools/smoke_summary.py"]:
        tool("smoke_summary.py").parse_args(argv[4:])
        return
    else:
        assert argv[0] == "env" and argv[2:4] == ["python3", "tools/compare-spread.py"], argv
        assert (REPO / argv[3]).is_file()
        return
    if args.command in ("run", "compare", "calibrate"):
        calibrate_gate = args.command == "calibrate" and not args.compare  # calibrate --compare selects with -k
        patterns = args.case or (["latent_prep[single_frame-*]", "vae_encode[*-1f]"] if calibrate_gate else [])
        chosen = cases.chosen("wan22", args.grid, args.keyword, patterns)
        run_controls(args).check_applies(chosen)
    if args.command == "run" and args.baselines_dir == REPO_ROOT / "baselines" and args.dit_layers is None:
        covered(args, {spec.name for spec in chosen})


def covered(args, measured: set[str]) -> None:
    """A run gated against the device's baseline (once merged, every case of the default grid) must measure
    each of its cases or --exclude it: else the gate fails it on coverage, whatever it measured."""
    for spec in cases.all_cases("wan22"):
        assert spec.name in measured or any(matches(spec.name, p) for p in args.exclude), (spec.name, args.exclude)


def test_the_script_is_valid_bash_and_every_step_is_documented():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    assert len(STEPS) == 26
    for step in STEPS:
        assert re.search(rf"#   .*{re.escape(step.split('-')[0])}", HEADER), step


@pytest.mark.parametrize("step", STEPS)
def test_each_step_prints_commands_that_parse(step, tmp_path):
    done = dry(step, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if line]
    assert commands, done.stdout
    for argv in commands:
        check(argv)
    assert not (tmp_path / "evidence").exists()  # a dry run writes nothing


def test_the_compare_calibration_steps_compare_the_720p_single_frame_cases(tmp_path):
    """The issue asked for the two 720p single_frame cases of its day; the grid now holds three."""
    for step in ("compare-calib-1", "compare-calib-2"):
        (line,) = dry(step, tmp_path=tmp_path).stdout.splitlines()
        args = parse_args(["calibrate", *shlex.split(line)[6:]])
        assert args.compare and args.aa_runs == 5 and args.runs_per_size == 0
        chosen = cases.chosen("wan22", args.grid, args.keyword, [])
        assert [s.name for s in chosen] == [f"latent_prep[single_frame-1280x720-{n}f]" for n in (33, 81, 121)]


def test_counting_steps_plan_their_runs():
    out = dry("compare-inject", tmp_path=Path("/nonexistent"), INJECT_COMPARES="3").stdout.splitlines()
    assert [shlex.split(line)[-3] for line in out[:3]] == ["compare-inject-1", "compare-inject-2", "compare-inject-3"]
    assert "--inject-slowdown" in out[0] and out[3].endswith("compare-inject-\\[0-9\\]\\*")


def test_a_counting_step_counts_its_own_runs_only(tmp_path):
    """compare-inject-gpu-<i> runs are not compare-inject's: each step still plans all of its own."""
    for i in (1, 2):
        (tmp_path / "evidence" / f"compare-inject-gpu-{i}").mkdir(parents=True)
        (tmp_path / "evidence" / f"compare-inject-gpu-{i}" / "compare.json").write_text("{}")
    slow = dry("compare-inject", tmp_path=tmp_path, INJECT_COMPARES="2").stdout.splitlines()
    assert [shlex.split(line)[-3] for line in slow[:2]] == ["compare-inject-1", "compare-inject-2"]
    gpu = dry("compare-inject-gpu", tmp_path=tmp_path, INJECT_COMPARES="3").stdout.splitlines()
    assert shlex.split(gpu[0])[-4:] == ["--run-id", "compare-inject-gpu-3", "--inject-gpu-work",
                                        "latent_prep[single_frame-*]=0.02"]  # 1 and 2 exist


def test_a_session_runs_the_plan_in_order_and_skips_what_is_done(tmp_path):
    (tmp_path / "evidence" / "done").mkdir(parents=True)
    (tmp_path / "evidence" / "done" / "full-1").write_text("exit 0 2026-11-29T00:00:00Z\n")
    done = dry("session", tmp_path=tmp_path, PLAN="revert-2d full-1 calib")
    assert done.returncode == 0, done.stderr
    heads = [line for line in done.stdout.splitlines() if line.startswith("== ")]
    assert heads[0].startswith("== revert-2d (") and heads[2].startswith("== calib (")
    assert heads[1] == "== full-1: done in an earlier call (exit 0 2026-11-29T00:00:00Z)"
    assert "--revert-first-frame" in done.stdout and "--run-id full-1" not in done.stdout
    assert done.stdout.splitlines()[-1] == (
        "still to do: revert-2d, calib x12 (about 810 s of device time, 2 calls of 530 s)")


def test_unknown_steps_are_refused():
    assert dry("bogus", tmp_path=Path("/nonexistent")).returncode == 2
    refused = dry("session", tmp_path=Path("/nonexistent"), PLAN="revert-2d bogus")
    assert refused.returncode == 2 and "unknown step in PLAN: bogus" in refused.stderr


def stubbed(tmp_path: Path, rc: int, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script for real, with python3 and nvidia-smi replaced by stubs that log their arguments and
    exit with `rc`: what it marks done, what it leaves for a later call, and what it packs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # STUB_RECORD=1: a run leaves its record (run.json, compare.json where it is a compare, the --json file);
    # STUB_TRACEBACK=1: it prints a Python traceback first.
    (bin_dir / "python3").write_text(f"""#!/bin/sh
[ "$1 $2" = "-m pip" ] && exit 0
echo "$*" >> {tmp_path}/calls
[ -n "$STUB_TRACEBACK" ] && printf 'Traceback (most recent call last):\\n  File "x.py"\\nZeroDivisionError\\n'
record=run.json dir= id= json=
for a in "$@"; do
  case $prev in --results-dir) dir=$a ;; --run-id) id=$a ;; --json) json=$a ;; esac
  [ "$a" = compare ] && record=compare.json
  prev=$a
done
if [ -n "$STUB_RECORD" ]; then
  [ -n "$dir" ] && [ -n "$id" ] && mkdir -p "$dir/$id" && echo '{{}}' > "$dir/$id/$record"
  [ -n "$json" ] && echo '{{}}' > "$json"
fi
exit {rc}
""")
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'name, driver_version, memory.total'\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    (tmp_path / "out").mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "EVIDENCE": str(tmp_path / "evidence"),
             "OUT": str(tmp_path / "out"), **env})


def test_a_verdict_marks_a_step_done_and_says_when_it_is_not_the_expected_one(tmp_path):
    done = stubbed(tmp_path, 1, "session", PLAN="revert-2d full-1", STUB_RECORD="1")
    assert done.returncode == 0, done.stderr
    marks = tmp_path / "evidence" / "done"
    assert (marks / "revert-2d").read_text().startswith("exit 1 (expected 1) ")
    assert not (marks / "full-1").exists()  # a failing verdict where a pass was expected: measured again
    assert "full-1: not done (exit 1, expected 0): read its log; a later call runs it again" in done.stdout
    durations = (tmp_path / "evidence" / "logs" / "durations.txt").read_text().splitlines()
    assert [line.split()[0] for line in durations] == ["revert-2d", "full-1"]
    assert all(re.fullmatch(r"\S+ \d+ s \d{4}-\d\d-\d\dT\S+Z", line) for line in durations), durations
    log = (tmp_path / "evidence" / "logs" / "revert-2d.log").read_text()
    assert log.startswith("$ python3 -m nox -s bench -- ") and log.endswith("exit status: 1\n")
    import tarfile
    with tarfile.open(tmp_path / "out" / "evidence.tar.gz") as packed:
        assert any(name.endswith("evidence/done/revert-2d") for name in packed.getnames())
    again = stubbed(tmp_path, 0, "session", PLAN="revert-2d full-1", STUB_RECORD="1")
    assert again.stdout.count("done in an earlier call") == 1
    assert (marks / "full-1").read_text().startswith("exit 0 (expected 0) ")
    assert (tmp_path / "calls").read_text().count("--revert-first-frame") == 1  # not measured again


@pytest.mark.parametrize(("rc", "env", "why"), [
    (1, {"STUB_RECORD": "1", "STUB_TRACEBACK": "1"}, "a Python traceback in its log"),  # nox: exit 1 for a crash
    (1, {}, "no {E}/revert-2d/run.json"),  # exit 1 with no run record: no verdict was reached
    (0, {"STUB_RECORD": "1", "STUB_TRACEBACK": "1"}, "a Python traceback in its log"),
    (2, {"STUB_RECORD": "1"}, "exit 2"),
    (137, {}, "exit 137, no {E}/revert-2d/run.json"),
])
def test_a_crashed_step_is_never_done(tmp_path, rc, env, why):
    """revert-2d expects exit 1, the code nox gives a traceback too: only a run record without a traceback
    makes it a verdict."""
    done = stubbed(tmp_path, rc, "session", PLAN="revert-2d", **env)
    assert not (tmp_path / "evidence" / "done" / "revert-2d").exists()
    why = why.format(E=tmp_path / "evidence")
    assert f"revert-2d: not done ({why}): read its log; a later call runs it again" in done.stdout


def test_a_crash_or_a_cut_leaves_the_step_for_a_later_call(tmp_path):
    done = stubbed(tmp_path, 2, "session", PLAN="revert-2d")
    assert "revert-2d: not done (exit 2, no " in done.stdout
    assert not (tmp_path / "evidence" / "done" / "revert-2d").exists()
    (tmp_path / "evidence" / "revert-2d").mkdir()  # what a run cut short leaves
    again = stubbed(tmp_path, 0, "session", PLAN="revert-2d", STUB_RECORD="1")
    (stale,) = (tmp_path / "evidence" / "stale").iterdir()  # kept aside: run ids are never reused
    assert stale.name.startswith("revert-2d-")
    assert (tmp_path / "evidence" / "done" / "revert-2d").read_text().startswith("exit 0 (expected 1) ")
    assert "WARNING: revert-2d exited 0, expected 1: read its log" in again.stdout  # a control that passed


def test_a_step_whose_estimate_does_not_fit_is_not_started(tmp_path):
    done = stubbed(tmp_path, 0, "session", PLAN="full-1 revert-2d", SESSION_S="200")
    assert "== full-1: not started (needs ~300 s, " in done.stdout
    assert "== revert-2d (" in done.stdout
    assert "full-1" not in (tmp_path / "calls").read_text()


def test_a_baseline_is_done_only_once_every_run_is_merged_into_it(tmp_path):
    """After full-1 and full-2 the baseline merges those two and stays to do; where it comes again in PLAN,
    after fast-1..3, it merges all five and is done. A merge that fails is not done."""
    def runs(*names):
        for name in names:
            (tmp_path / "evidence" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "evidence" / name / "run.json").write_text("{}")

    assert "baseline: needs at least two of" in stubbed(tmp_path, 0, "session", PLAN="baseline").stdout
    runs("full-1", "full-2")
    early = stubbed(tmp_path, 0, "session", PLAN="baseline")
    assert "baseline: merged 2 of 5 runs; merged again once all exist" in early.stdout
    assert not (tmp_path / "evidence" / "done" / "baseline").exists()
    runs("fast-1", "fast-2", "fast-3")
    stubbed(tmp_path, 0, "session", PLAN="baseline")
    merges = [line for line in (tmp_path / "calls").read_text().splitlines() if line.startswith("-m bench baseline")]
    assert [line.count("--from-run") for line in merges] == [2, 5]
    assert (tmp_path / "evidence" / "done" / "baseline").read_text().startswith("exit 0 (expected 0) ")
    (tmp_path / "evidence" / "done" / "baseline").unlink()
    failed = stubbed(tmp_path, 1, "session", PLAN="baseline")
    assert "baseline: not done (exit 1, expected 0)" in failed.stdout
    assert not (tmp_path / "evidence" / "done" / "baseline").exists()


def test_a_full_depth_baseline_waits_for_its_three_runs(tmp_path):
    for name in ("dit36-480", "dit36-720-single_frame"):
        (tmp_path / "evidence" / name).mkdir(parents=True)
        (tmp_path / "evidence" / name / "run.json").write_text("{}")
    early = stubbed(tmp_path, 0, "session", PLAN="baseline-dit36")
    assert "baseline-dit36: merged 2 of 3 runs" in early.stdout
    assert not (tmp_path / "evidence" / "done" / "baseline-dit36").exists()


def test_the_smoke_measures_the_720p_first_frame_two_compared_cases_and_the_default_suite(tmp_path):
    done = dry("smoke", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines()]
    for argv in commands:
        check(argv)
    speed, speed_line, compare, compare_line, bench, bench_line = commands
    evidence = tmp_path / "evidence"
    ff = tool("first_frame_speed.py").parse_args(speed[2:])
    assert ff.resolutions == [(1280, 720)] and ff.compile_modes == [] and ff.budget_s < 75  # its cap
    args = parse_args(["compare", *compare[6:]])
    assert [c.name for c in cases.chosen("wan22", args.grid, args.keyword, [])] == [
        "latent_prep[single_frame-1280x720-33f]", "latent_prep[single_frame-1280x720-81f]"]
    args = parse_args(["run", *bench[6:]])
    # The default suite, less diffusers' cases (the diffusers step measures them)
    assert (args.keyword, args.case, args.grid, args.preset) == ("not diffusers", [], "default", "auto")
    assert not args.baselines_dir.exists() and not args.require_baseline  # in-run checks only, on any device
    assert args.run_id == "full-1"
    merged = dry("baseline", tmp_path=tmp_path).stdout
    assert f"--from-run {evidence}/full-1 " in merged  # the baseline step merges the smoke's suite run
    summaries = [tool("smoke_summary.py").parse_args(argv[4:]) for argv in (speed_line, compare_line, bench_line)]
    assert [(a.check, a.json or a.run) for a in summaries] == [
        ("first-frame", evidence / "smoke-first-frame.json"), ("compare", evidence / "smoke-compare"),
        ("bench", evidence / "full-1")]


def test_a_smoke_part_done_is_skipped_and_the_smoke_is_done_with_all_three(tmp_path):
    first = stubbed(tmp_path, 0, "session", PLAN="smoke", STUB_RECORD="1")
    marks = tmp_path / "evidence" / "done"
    assert {p.name for p in marks.iterdir()} == {"smoke-first-frame", "smoke-compare", "full-1", "smoke"}
    assert len((tmp_path / "evidence" / "logs" / "smoke.txt").read_text().splitlines()) == 3, first.stdout
    (marks / "smoke").unlink()
    (marks / "smoke-compare").unlink()
    again = stubbed(tmp_path, 0, "session", PLAN="smoke", STUB_RECORD="1")
    assert again.stdout.count("done in an earlier call") == 2
    assert (tmp_path / "calls").read_text().count("--run-id full-1") == 1  # not measured again
    assert (tmp_path / "calls").read_text().count("--run-id smoke-compare") == 2


def test_the_default_plan_takes_at_most_eight_calls_and_starts_with_the_smoke(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "plan"], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "EVIDENCE": str(tmp_path / "evidence")})
    assert done.returncode == 0, done.stderr
    calls = [line for line in done.stdout.splitlines() if line.startswith("call ")]
    assert done.stdout.splitlines()[-1] == f"calls: {len(calls)}" and 1 <= len(calls) <= 8, done.stdout
    assert calls[0].split(":", 1)[1].split()[0] == "smoke"
    assert "never fits" not in done.stdout
    for line in calls:  # no call runs past its 530 s by the script's own estimates
        assert int(re.match(r"call \d+, ~(\d+) s:", line).group(1)) <= 530, line
    planned = " ".join(line.split(":", 1)[1] for line in calls)
    plan = re.search(r'PLAN=\$\{PLAN:-"([^"]+)"', TEXT).group(1).replace("\\\n", " ").split()
    for step in set(plan):
        assert re.search(rf"(^| ){re.escape(step)}( |$)", planned), step  # every step of PLAN is run
    assert "calib-report" in calls[-1]


def test_the_plan_resumes_from_what_is_done(tmp_path):
    (tmp_path / "evidence" / "done").mkdir(parents=True)
    for step in ("smoke", "revert-2d"):
        (tmp_path / "evidence" / "done" / step).write_text("exit 0\n")
    done = subprocess.run(["bash", str(SCRIPT), "plan"], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "EVIDENCE": str(tmp_path / "evidence")})
    assert done.stdout.splitlines()[0].startswith("call 1, ~") and " smoke" not in done.stdout
