"""`python -m bench compare`: the stopping rule, the judge, and base against head end to end.

The end-to-end tests run in a temporary git repository holding a copy of this checkout's bench/
and cosmos3/, so that commits, a dirty head and a broken base can be made without touching the
real repository. Their workers run torch on one thread (OMP_NUM_THREADS=1): on a loaded 2-core
machine two intra-op threads made the shortest round 20x slower and bimodal (30-70 ms against
0.1-0.9 s), which only the tests' own host needs to be spared. Their slowdowns are still many
times the round itself.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.cli import compare as cli_compare
from bench.cli.main import main
from bench.compare.judge import NOT_PAIR_RULES, PAIR_RULE_NAMES, PAIR_RULES, judge
from bench.compare.policy import CHECK_GROWTH, MIN_TRIALS, stop_reason
from bench.compare.record import (
    COMPARE_RECORD,
    FAILED,
    NEW,
    NOT_COMPARABLE,
    REMOVED,
    Unpaired,
    load_compare,
)
from bench.core.records import CaseSpec
from bench.gate import rules as gate
from bench.gate import stats
from tests.compare.helpers import paired, record
from tests.processes import alive, descendants, gone_within, linux_only
from tests.repo import REPO

WORKER_ENV = {"OMP_NUM_THREADS": "1"}  # see the module docstring
ONE_CASE = "latent_prep and single_frame and 64x48 and 9f"  # the shortest round of the tiny grid
ONE_CASE_NAME = "latent_prep[single_frame-64x48-9f]"
# Few trials: the end-to-end tests check wiring and verdicts on effects far beyond the noise.
FEW_TRIALS = ["--rounds", "1,15,15,1", "--processes", "3"]  # three worker pairs (the fewest with a process test): 5 trials each
STARTUP_TIMEOUT_S = 240.0  # two workers import torch and diffusers on a loaded 2-core machine
EXIT_TIMEOUT_S = 120.0
ORPHAN_DEADLINE_S = 3.0  # a killed compare's workers die by signal, not at the end of a multi-second round


# ---- the stopping rule ---------------------------------------------------------------------------


def stop(d, threshold=0.02, *, n_min=10, max_trials=400, spent_s=0.0, budget_s=4.0, check=True):
    return stop_reason(np.asarray(d), threshold, n_min=n_min, max_trials=max_trials, spent_s=spent_s,
                           budget_s=budget_s, check=check)


def test_stopping_rule():
    rng = np.random.default_rng(0)
    quiet = 0.002 * rng.standard_normal(40)
    assert stop(quiet[:9]) is None  # below the minimum, whatever the data
    assert stop(quiet[:10]) == "within"  # the interval lies below log(1.02)
    # A 5% slowdown with 0.2% noise: the interval is above the limit, which never stops a case early ...
    slower = math.log(1.05) + quiet
    assert stop(slower[:10], 0.10) == "within"
    assert stop(slower[:10], 0.0) is None or stop(slower[:10], 0.0) == "budget"
    # ... until it is narrower than the threshold.
    assert stop(slower[:20], 0.02) == "resolved"
    noisy = 0.2 * rng.standard_normal(40)
    assert stop(noisy[:20]) is None
    assert stop(noisy[:20], spent_s=4.0) == "budget"
    assert stop(noisy[:20], check=False, spent_s=1.0) is None
    assert stop(noisy[:20], max_trials=20) == "max trials"


def test_judge_passes_noise_and_fails_a_slowdown_naming_the_case(make_env):
    report = judge(record([paired(ratio=1.0, seed=1), paired("expand", ratio=1.05, seed=2)], make_env=make_env))
    verdicts = {c.name: c.verdict for c in report.comparisons}
    assert verdicts == {"latent_prep[single_frame-1280x720-33f]": stats.OK, "latent_prep[expand-1280x720-33f]":
                        stats.REGRESSION}
    (failure,) = report.failures
    assert failure.startswith("latent_prep[expand-1280x720-33f]: median paired ratio 1.05")
    assert report.exit_code == 1


def test_judge_needs_size_as_well_as_significance(make_env):
    """1% slower, clearly significant, but within the 2% threshold: ok, with a note."""
    report = judge(record([paired(ratio=1.01, noise=0.002)], make_env=make_env))
    (c,) = report.comparisons
    assert c.verdict == stats.OK and c.p_adjusted < 0.01 and "significant but within +2.0%" in c.note
    assert report.passed


def test_holm_across_cases_can_turn_a_marginal_regression_into_noise(make_env):
    """One marginal slowdown alone is a regression; beside 40 other cases Holm asks for more evidence."""
    # 8 of 10 trials 3-8% slower, 2 faster: exact one-sided Wilcoxon p = 0.0049.
    marginal = paired(log_ratios=np.r_[np.linspace(0.03, 0.08, 8), -0.01, -0.02])
    alone = judge(record([marginal], make_env=make_env)).comparisons[0]
    assert alone.verdict == stats.REGRESSION, alone
    others = [paired(ratio=1.0, seed=10 + i, frames=100 + 4 * i) for i in range(40)]
    crowd = {c.name: c for c in judge(record([marginal, *others], make_env=make_env)).comparisons}
    c = crowd[marginal.name]
    assert c.p_slower == alone.p_slower and c.p_adjusted > c.p_slower
    assert c.verdict == stats.NOT_SIGNIFICANT


def test_unpaired_cases_new_removed_and_not_comparable_pass_but_a_head_failure_fails(make_env):
    spec = CaseSpec("latent_prep", 64, 48, 9, "single_frame")
    passing = [Unpaired(spec, NEW, "in the head's grid only"),
               Unpaired(CaseSpec("vae_encode", 64, 48, 1), REMOVED, "in the base's grid only"),
               Unpaired(CaseSpec("e2e", 64, 48, 9, "expand"), NOT_COMPARABLE,
                            "the base cannot run it: AttributeError: no encode_strategy")]
    report = judge(record([paired()], passing, make_env=make_env))
    assert report.passed, report.failures
    assert any("not comparable: the base cannot run it" in n for n in report.notes)
    failed = Unpaired(CaseSpec("e2e", 64, 48, 9, "single_frame"), FAILED, "RuntimeError: boom\ntraceback")
    report = judge(record([paired()], [*passing, failed], make_env=make_env))
    assert report.failures == ("e2e[single_frame-64x48-9f]: failed on the head: RuntimeError: boom",)


def test_working_memory_is_judged_by_the_gate_rule(make_env):
    report = judge(record([paired(head_mem=1.10, base_mem=1.0)], make_env=make_env))
    assert [f.rule for f in report.findings] == ["memory"]  # no counters in these records: no other rule speaks
    (failure,) = report.failures
    assert "working memory 1.100 GiB vs baseline 1.000 GiB" in failure
    assert judge(record([paired(head_mem=1.0, base_mem=1.0)], make_env=make_env)).passed


def test_pair_rules_leave_out_the_in_run_checks():
    assert [r.name for r in PAIR_RULES] == ["device_time", "counters", "memory"]


def test_every_gate_rule_is_applied_by_compare_or_left_out_with_a_reason():
    """A new rule of bench.gate.rules is not applied to base against head until someone decides which it is."""
    names = [rule.name for rule in gate.RULES]
    assert set(names) == PAIR_RULE_NAMES | set(NOT_PAIR_RULES), "name the new gate rule in one of the two"
    assert not PAIR_RULE_NAMES & set(NOT_PAIR_RULES)
    assert all(reason.strip() for reason in NOT_PAIR_RULES.values())


def simulate_compare(rng, *, cases_n: int, noise: float, threshold: float, alpha: float) -> bool:
    """One A/A compare on heavy-tailed synthetic pairs, with the real stopping rule; True on a false alarm."""
    n_min = max(MIN_TRIALS, stats.min_trials_for(cases_n, alpha))
    p, ratios = [], []
    for _ in range(cases_n):
        d: list[float] = []
        next_check = n_min
        while True:
            d.append(noise * rng.standard_t(3))
            check = len(d) >= next_check
            if check:
                next_check = max(len(d) + 1, math.ceil(len(d) * CHECK_GROWTH))
            if stop_reason(np.asarray(d), threshold, n_min=n_min, max_trials=30, spent_s=0.0, budget_s=1.0,
                               check=check):
                break
        p.append(stats.wilcoxon_p(np.asarray(d), "greater"))
        ratios.append(math.exp(float(np.median(d))))
    return any(a < alpha and r > 1 + threshold for a, r in zip(stats.holm(p), ratios, strict=True))


@pytest.mark.slow
def test_a_whole_aa_compare_rarely_raises_a_false_alarm():
    """Stopping rule, Wilcoxon and Holm together on A/A data: at most about alpha of compares fail."""
    rng = np.random.default_rng(3)
    runs = 100
    alarms = sum(simulate_compare(rng, cases_n=3, noise=0.03, threshold=0.0, alpha=0.05) for _ in range(runs))
    # Binomial(100, 0.05) exceeds 10 with probability about 1%. Threshold 0 is the harshest case: no size
    # condition shields the test from the repeated looks of the stopping rule.
    assert alarms <= 10, alarms


# ---- end to end, in a temporary repository --------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repository of this checkout's code (working-tree versions) with branches `broken` (cosmos3 raises on
    import), `nocosmos` (no cosmos3 package) and `old` (the latent-prep stage without an encode strategy, as
    before the single-frame change); `main` is checked out and clean."""
    root = tmp_path_factory.mktemp("repo") / "cosmos3-bench"
    # The packages' sources as they are on disk (not git's list: mutmut runs these tests in a copy outside git).
    files = [p for package in ("bench", "cosmos3") for p in (REPO / package).rglob("*.py")]
    for path in [*files, REPO / "pyproject.toml"]:
        target = root / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    git(root.parent, "init", "-q", "-b", "main", str(root))
    commit_all(root, "the code under test")
    git(root, "checkout", "-q", "-b", "broken")
    init = root / "cosmos3" / "__init__.py"
    init.write_text(init.read_text() + '\nraise ImportError("cosmos3 broken on purpose")\n')
    commit_all(root, "broken")
    git(root, "checkout", "-q", "main")
    git(root, "checkout", "-q", "-b", "nocosmos")
    shutil.rmtree(root / "cosmos3")
    commit_all(root, "no cosmos3")
    git(root, "checkout", "-q", "main")
    git(root, "checkout", "-q", "-b", "old")
    stage = root / "cosmos3" / "stages" / "latent_preparation.py"
    stage.write_text(stage.read_text() + OLD_STAGE_API)
    commit_all(root, "the stage's old signature")
    git(root, "checkout", "-q", "main")
    return root


OLD_STAGE_API = """

_NewStage = Cosmos3LatentPreparationStage


class Cosmos3LatentPreparationStage(_NewStage):  # noqa: F811 -- the old API: no encode strategy to choose
    def __init__(self, vae, *, dtype=torch.bfloat16):
        super().__init__(vae, encode_strategy="expand", dtype=dtype)
"""


def clone_of(repo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cosmos3-bench"
    shutil.copytree(repo, copy, symlinks=True)
    return copy


def compare_in(repo: Path, tmp_path: Path, monkeypatch, *args: str) -> int:
    """`python -m bench compare` with `repo` as the head, in this process (its torch is already imported)."""
    monkeypatch.setattr(cli_compare, "REPO_ROOT", repo)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    for name, value in WORKER_ENV.items():
        monkeypatch.setenv(name, value)
    return main(["compare", "--preset", "tiny", "--results-dir", str(tmp_path / "results"), *args])


def failure_lines(summary: str) -> list[str]:
    """The verdict's failure bullets: the lines between the FAIL line and the next section."""
    _, _, rest = summary.partition("**FAIL**")
    assert rest, summary[-2000:]
    return [line for line in rest.split("\n## ")[0].splitlines() if line.startswith("- ")]


def checkout_path(out: str) -> Path:
    found = re.search(r"checked out at (\S+)", out)
    assert found, out
    return Path(found.group(1))


def assert_no_worktree(repo: Path, out: str) -> None:
    tree = checkout_path(out)
    assert not tree.exists() and not tree.parent.exists(), tree
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


@pytest.mark.slow
def test_aa_passes_and_leaves_the_raw_pairs_and_no_worktree(repo, tmp_path, monkeypatch, capsys):
    code = compare_in(repo, tmp_path, monkeypatch, "--base", "HEAD", "-k", ONE_CASE, *FEW_TRIALS,
                      "--threshold", "1.0", "--run-id", "aa")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert_no_worktree(repo, out)
    run_dir = tmp_path / "results" / "aa"
    record = load_compare(run_dir / COMPARE_RECORD)
    (pair,) = record.pairs
    assert pair.name == ONE_CASE_NAME and len(pair.head.samples_ms) == len(pair.base.samples_ms) >= 9
    assert record.base.commit == record.head.commit and not record.head.dirty
    assert Path(record.base.cosmos3_file).parts[-3] == "base" and Path(record.head.cosmos3_file).is_relative_to(repo)
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "**PASS**" in summary and record.base.commit[:12] in summary
    assert (run_dir / "report" / "paired_ratio.png").stat().st_size > 1000
    assert "worker base: cosmos3 from" in (run_dir / "worker-base-0.log").read_text()
    assert not (repo / "baselines").exists()


@pytest.mark.slow
def test_a_committed_slowdown_fails_naming_the_case(repo, tmp_path, monkeypatch, capsys):
    head = clone_of(repo, tmp_path)
    stage = head / "cosmos3" / "stages" / "latent_preparation.py"
    text = stage.read_text().replace("    def forward(self, req: Req) -> Req:\n",
                                     "    def forward(self, req: Req) -> Req:\n        time.sleep(0.3)\n")
    stage.write_text(text.replace("from __future__ import annotations\n",
                                  "from __future__ import annotations\n\nimport time\n"))
    assert "time.sleep(0.3)" in stage.read_text()
    code = compare_in(head, tmp_path, monkeypatch, "--base", "main", "-k", ONE_CASE, "--rounds", "1,9,9,1",
                      "--processes", "1", "--threshold", "0.5", "--run-id", "slowed")  # one pair: 2 workers
    out, err = capsys.readouterr()
    assert code == 1, out + err
    (failure,) = failure_lines(out)
    assert re.fullmatch(rf"- {re.escape(ONE_CASE_NAME)}: median paired ratio [\d.]+ .* the head is slower "
                        r"\(one process pair: process bias not measured\)", failure), failure
    assert "(dirty)" in out
    assert_no_worktree(head, out)


@pytest.mark.slow
def test_an_injected_slowdown_fails_and_a_case_the_base_cannot_run_is_not_comparable(repo, tmp_path, monkeypatch,
                                                                                      capsys):
    """Against `old`, whose latent-prep stage takes no encode strategy: that case is not comparable (not a
    failure), while the VAE encode, the same on both sides, is slowed on the head only and fails."""
    encode = "vae_encode[64x48-1f]"
    code = compare_in(repo, tmp_path, monkeypatch, "--base", "old", "-k", f"({ONE_CASE}) or {encode}", *FEW_TRIALS,
                      "--threshold", "0.5", "--inject-slowdown", f"{encode}=3", "--run-id", "inject")
    out, err = capsys.readouterr()
    assert code == 1, out + err
    failures = failure_lines(out)
    assert len(failures) == 1 and failures[0].startswith(f"- {encode}: median paired ratio"), failures
    assert f"| `{ONE_CASE_NAME}` | not comparable | the base cannot run it: TypeError:" in out
    record = load_compare(tmp_path / "results" / "inject" / COMPARE_RECORD)
    (pair,) = record.pairs
    assert pair.head.injected == ("slowdown 3",) and pair.base.injected == ()
    assert record.head.environment.negative_controls == (f"slowdown {encode}=3",)
    assert record.base.environment.negative_controls == ()


@pytest.mark.slow
def test_a_base_that_fails_to_import_exits_2_naming_the_ref(repo, tmp_path, monkeypatch, capsys):
    code = compare_in(repo, tmp_path, monkeypatch, "--base", "broken", "-k", ONE_CASE, "--processes", "3",
                      "--run-id", "broken")
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    # "#N": which of the base's worker processes (compare runs K pairs)
    assert re.search(r"error: base broken \([0-9a-f]{12}\) #\d+: worker died before answering Start", captured.err)
    assert "ImportError: cosmos3 broken on purpose" in captured.err
    assert_no_worktree(repo, captured.out)
    assert not (tmp_path / "results" / "broken").exists()


def test_an_unknown_ref_or_a_base_without_cosmos3_exits_2(repo, tmp_path, monkeypatch, capsys):
    assert compare_in(repo, tmp_path, monkeypatch, "--base", "no-such-ref") == 2
    assert "error: base no-such-ref: is not a commit in" in capsys.readouterr().err
    assert compare_in(repo, tmp_path, monkeypatch, "--base", "nocosmos") == 2
    captured = capsys.readouterr()
    assert "error: base nocosmos: has no cosmos3 package" in captured.err
    assert_no_worktree(repo, captured.out)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


# ---- processes: a killed worker, a stopped compare --------------------------------------------------


def start_compare(repo: Path, tmp_path: Path, run_id: str, processes: int, start: str = "fork",
                  extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, list[str]]:
    """A long compare in its own process; returns once it has started measuring (its first case's line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "compare", "--base", "HEAD", "--preset", "tiny", "-k", ONE_CASE,
         "--rounds", "1,200,200,600000", "--results-dir", str(tmp_path / "results"), "--run-id", run_id,
         "--processes", str(processes), "--worker-start", start, *extra],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **WORKER_ENV, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for line in iter(proc.stdout.readline, ""):
        lines.append(line)
        if "warm-up and trials" in line:
            break
        assert time.monotonic() < deadline, lines
    assert lines and "warm-up and trials" in lines[-1], "".join(lines) + proc.stderr.read()
    time.sleep(1.0)  # into the rounds
    return proc, lines


def workers_of(lines: list[str]) -> dict[str, list[int]]:
    """The compare's live worker processes by side, from the pids it printed (an exec'd worker is the
    compare's child, a forked one the fork server's), each checked against the process tree."""
    out: dict[str, list[int]] = {}
    for line in lines:
        if m := re.match(r"(base|head) .*: cosmos3 from (\S+) \(worker pid (\d+)\)$", line.strip()):
            side, pid = m.group(1), int(m.group(3))
            if alive(pid):
                expected = "path-base" if side == "base" else "path-head"
                assert expected in os.readlink(f"/proc/{pid}/cwd"), (side, pid)
                out.setdefault(side, []).append(pid)
    return out


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("start", ["fork", "exec"])
def test_a_killed_worker_fails_the_run_with_its_stderr(repo, tmp_path, start):
    proc, lines = start_compare(repo, tmp_path, "killed", processes=3, start=start)
    assert "6 workers ready in" in "".join(lines) and f"({start})" in "".join(lines)
    workers = workers_of(lines)
    tree = descendants(proc.pid)
    assert all(pid in tree for pids in workers.values() for pid in pids), (workers, tree)
    assert {side: len(pids) for side, pids in workers.items()} == {"base": 3, "head": 3}, workers
    os.kill(workers["base"][1], signal.SIGKILL)
    out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == 2, err
    assert re.search(r"error: base HEAD \([0-9a-f]{12}\) #\d+: worker died before answering (Round|Prepare|Finish) "
                     r"and was killed by SIGKILL; the end of its stderr:", err), err
    assert "  | worker base: cosmos3 from" in err
    assert_no_worktree(repo, "".join(lines) + out)
    assert not workers_of(lines)
    assert not gone_within(tree, EXIT_TIMEOUT_S), "a worker or the fork server outlived the compare"


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_compare_removes_its_worktree_and_workers(repo, tmp_path, signum):
    proc, lines = start_compare(repo, tmp_path, "stopped", processes=1)  # the kill test runs several pairs
    workers = workers_of(lines)
    assert {side: len(pids) for side, pids in workers.items()} == {"base": 1, "head": 1}, workers
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert_no_worktree(repo, "".join(lines) + out)
    assert not gone_within([pid for pids in workers.values() for pid in pids], EXIT_TIMEOUT_S)
    run_dir = tmp_path / "results" / "stopped"
    assert sorted(p.name for p in run_dir.iterdir()) == ["interrupted.json"]


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("start", ["fork", "exec"])
def test_the_workers_die_with_a_killed_compare(repo, tmp_path, start):
    """SIGKILL runs no handler: an exec'd worker has only its parent-death signal left; a forked one's parent is
    the fork server, which exits when the coordinator is gone (test_forkserver.py: also mid-request)."""
    proc, lines = start_compare(repo, tmp_path, "orphans", processes=1, start=start)
    workers = workers_of(lines)
    tree = descendants(proc.pid)
    assert {side: len(pids) for side, pids in workers.items()} == {"base": 1, "head": 1}, workers
    assert all(pid in tree for pids in workers.values() for pid in pids), (workers, tree)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=EXIT_TIMEOUT_S)
    assert not gone_within(tree, ORPHAN_DEADLINE_S), "a worker or the fork server outlived the killed compare"
