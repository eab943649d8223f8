"""The trial loop: start the workers, measure each case on both sides in seeded order, write the record."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.compare.judge import first_line
from bench.compare.policy import (
    CHECK_GROWTH,
    DEFAULT_PROCESSES,
    MIN_TRIALS_PER_PROCESS,
    TRIAL_ORDER_SEED,
    TrialPolicy,
    check_processes,
    check_start,
    stop_reason,
)
from bench.compare.protocol import (
    Finish,
    Finished,
    Prepare,
    Prepared,
    Ready,
    Round,
    RoundDone,
    Start,
    Unavailable,
)
from bench.compare.record import (
    FAILED,
    NEW,
    NOT_COMPARABLE,
    REMOVED,
    CompareRecord,
    Criteria,
    PairedCase,
    Side,
    Unpaired,
)
from bench.compare.worker_process import START_TIMEOUT_S, WorkerError, WorkerProcess
from bench.compare.worktree import base_worktree, check_package, head_state, resolve_ref
from bench.core import cases as cases_mod
from bench.core.interrupt import Interrupted, deferred_signals, stopped_by_signals, write_interrupted
from bench.core.records import CaseResult, CaseSpec
from bench.gate.stats import log_ratios, min_trials_for
from bench.measure.controls import RunControls
from cosmos3.errors import InputError


@dataclass(frozen=True)
class CompareSettings:
    """A compare's every input, checked by the command line before anything is created."""

    base_ref: str
    repo: Path  # the head: its working tree, and the repository the base ref is looked up in
    preset_name: str  # tiny | wan22
    controls: RunControls  # the head's negative controls (and --rounds)
    criteria: Criteria
    results_dir: Path
    run_id: str
    keyword: str | None = None
    dit_layers: int | None = None
    weights_dir: Path | None = None
    argv: str = ""
    processes: int = DEFAULT_PROCESSES  # worker process pairs
    worker_start: str = "exec"  # WORKER_STARTS

    def __post_init__(self) -> None:
        check_processes(self.processes)
        check_start(self.worker_start)


def _side_env(shim: Path, head_root: Path) -> dict[str, str]:
    """The worker's environment: `cosmos3` from the shim (first), `bench` from the head."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), str(head_root), os.environ.get("PYTHONPATH")]))
    env.pop("COSMOS3_BENCH_CONTROLS", None)  # the controls travel in Start, to the head only
    return env


@contextlib.contextmanager
def started_workers(settings: CompareSettings, trees: dict[str, Path], labels: dict[str, str], scratch: Path,
                    processes: int = 1, seed: int = TRIAL_ORDER_SEED
                    ) -> Iterator[list[dict[str, tuple[WorkerProcess, Ready]]]]:
    """`processes` pairs of workers (head and base) started together, in a seeded random order (their
    models build in parallel), and Ready; stopped however the block ends."""
    workers: dict[tuple[int, str], WorkerProcess] = {}
    slots = [(j, side) for j in range(processes) for side in trees]
    order = [slots[i] for i in np.random.default_rng(seed).permutation(len(slots))]
    try:
        for side, tree in trees.items():
            shim = scratch / f"path-{side}"
            shim.mkdir()
            (shim / "cosmos3").symlink_to(tree / "cosmos3", target_is_directory=True)
        for j, side in order:
            shim = scratch / f"path-{side}"
            name = side if processes == 1 else f"{side}-{j}"
            label = labels[side] if processes == 1 else f"{labels[side]} #{j}"
            env, log = _side_env(shim, settings.repo), scratch / f"worker-{name}.log"
            if settings.worker_start == "fork":
                workers[j, side] = WorkerProcess.fork(side, label, env, shim, settings.repo, log)
            else:  # cwd = the shim, so that `python -m` puts no checkout's cosmos3 before it on sys.path.
                workers[j, side] = WorkerProcess.exec(side, label, [sys.executable, "-m", "bench.compare.worker"], env, shim,
                                                      log)
        for (_, side), worker in workers.items():
            worker.send(Start(
                side=side, tree=str(trees[side]), preset=settings.preset_name, dit_layers=settings.dit_layers,
                weights_dir=str(settings.weights_dir) if settings.weights_dir else None,
                controls=dataclasses.replace(settings.controls, parent_pid=None) if side == "head" else RunControls(),
            ))
        ready = {key: worker.receive((Ready,), START_TIMEOUT_S) for key, worker in workers.items()}
        yield [{side: (workers[j, side], ready[j, side]) for side in trees} for j in range(processes)]
        for worker in workers.values():
            worker.quit()
    finally:
        with deferred_signals() as pending:
            for worker in workers.values():
                worker.stop()
        if pending:
            raise Interrupted(pending[0])


def _check_ready(ready: dict[str, tuple[WorkerProcess, Ready]], trees: dict[str, Path], head_root: Path) -> None:
    for side, (worker, r) in ready.items():
        if not Path(r.cosmos3_file).is_relative_to(os.path.realpath(trees[side])):
            raise WorkerError(worker.label, f"imported cosmos3 from {r.cosmos3_file}, not from {trees[side]}")
        if not Path(r.bench_file).is_relative_to(os.path.realpath(head_root)):
            raise WorkerError(worker.label, f"imported bench from {r.bench_file}, not the head's ({head_root})")
    base, head = ready["base"][1].environment, ready["head"][1].environment
    if base.device_slug != head.device_slug:
        raise InputError("workers", f"must share one device (base on {base.device_name}, head on {head.device_name})")


def measure_case(spec: CaseSpec, workers: dict[str, WorkerProcess] | Sequence[dict[str, WorkerProcess]],
                 policy: TrialPolicy, *, threshold: float, rng: np.random.Generator, seed: int
                 ) -> PairedCase | Unpaired:
    """Warm up every worker, then trials of one round per side in random order, one side at a time, each
    trial on one process pair (shuffled blocks of one trial per pair, see trial_schedule)."""
    pairs = [workers] if isinstance(workers, dict) else list(workers)
    k = len(pairs)
    first = ["head", "base"] if rng.random() < 0.5 else ["base", "head"]
    for j in rng.permutation(k):
        for side in first:
            reply = pairs[j][side].request(Prepare(spec, policy.warmup_rounds), (Prepared, Unavailable))
            if isinstance(reply, Unavailable):
                return _unavailable(spec, side, reply)
    head_ms: list[float] = []
    base_ms: list[float] = []
    head_first: list[bool] = []
    process: list[int] = []
    block: list[int] = []
    spent_s, next_check = 0.0, policy.min_trials
    while True:
        if not block:
            block = [int(j) for j in rng.permutation(k)]
        j = block.pop(0)
        order = ("head", "base") if rng.random() < 0.5 else ("base", "head")
        for side in order:
            reply = pairs[j][side].request(Round(spec.name), (RoundDone, Unavailable))
            if isinstance(reply, Unavailable):
                return _unavailable(spec, side, reply)
            (head_ms if side == "head" else base_ms).append(reply.ms)
            spent_s += reply.ms / 1e3
        head_first.append(order[0] == "head")
        process.append(j)
        n = len(head_ms)
        check = n >= next_check
        if check:
            next_check = max(n + 1, math.ceil(n * CHECK_GROWTH))
        # Stop only at the end of a block, so that every pair ran as many trials as the others.
        reason = stop_reason(log_ratios(head_ms, base_ms), threshold, n_min=policy.min_trials,
                             max_trials=policy.max_trials, spent_s=spent_s, budget_s=policy.budget_s,
                             check=check and not block, seed=seed)
        if reason and (not block or reason == "max trials"):
            break
    results: dict[str, list[CaseResult]] = {"head": [], "base": []}
    for pair in pairs:
        for side in ("head", "base"):
            reply = pair[side].request(Finish(spec.name), (Finished, Unavailable))
            if isinstance(reply, Unavailable):
                return _unavailable(spec, side, reply)
            results[side].append(reply.result)
    sides = {}
    for side, samples in (("head", head_ms), ("base", base_ms)):
        rs = results[side]
        peaks = [r.peak_mem_gib for r in rs if r.peak_mem_gib is not None]
        # The trials in trial order (each worker's own result holds only its share), the warm-ups of all.
        sides[side] = dataclasses.replace(
            rs[0], samples_ms=tuple(samples), warmup_ms=tuple(w for r in rs for w in r.warmup_ms),
            peak_mem_gib=max(peaks) if peaks else rs[0].peak_mem_gib)
    gpu = {side: tuple(g for r in results[side] for g in (r.gpu_before, r.gpu_after) if g is not None)
           for side in ("head", "base")}
    return PairedCase(sides["head"], sides["base"], tuple(head_first), reason, tuple(process) if k > 1 else (),
                      gpu["head"], gpu["base"])


def _unavailable(spec: CaseSpec, side: str, reply: Unavailable) -> Unpaired:
    if side == "head":
        return Unpaired(spec, FAILED, reply.error)
    return Unpaired(spec, NOT_COMPARABLE, f"the base cannot run it: {reply.error}")


def plan_cases(head: Sequence[CaseSpec], base: Sequence[CaseSpec], keyword: str | None
               ) -> tuple[list[CaseSpec], list[Unpaired]]:
    """The cases to pair (in the head's run order) and those on one side only, after -k."""
    head_sel, base_sel = cases_mod.select(list(head), keyword), cases_mod.select(list(base), keyword)
    if not head_sel and not base_sel:
        raise InputError("keyword", "selects no benchmark case on either side", keyword)
    base_names = {s.name for s in base_sel}
    head_names = {s.name for s in head_sel}
    paired = [s for s in head_sel if s.name in base_names]
    unpaired = [Unpaired(s, NEW, "in the head's grid only") for s in head_sel if s.name not in base_names]
    unpaired += [Unpaired(s, REMOVED, "in the base's grid only") for s in base_sel if s.name not in head_names]
    return paired, unpaired


def measure(settings: CompareSettings, base_commit: str, scratch: Path) -> tuple[CompareRecord, dict[str, str]]:
    """Check out the base, start both workers, measure every selected case; return the record and the
    workers' stderr logs. The worktree and the workers are gone when this returns or raises."""
    head_commit, dirty = head_state(settings.repo)
    labels = {"base": f"base {settings.base_ref} ({base_commit[:12]})", "head": "head (working tree)"}
    started = time.perf_counter()
    with base_worktree(settings.repo, settings.base_ref, base_commit, scratch) as base_tree:
        check_package(base_tree, settings.base_ref)
        trees = {"base": base_tree, "head": settings.repo}
        k = settings.processes
        startup = time.perf_counter()
        with started_workers(settings, trees, labels, scratch, k) as all_ready:
            startup_s = time.perf_counter() - startup
            for pair_ready in all_ready:
                _check_ready(pair_ready, trees, settings.repo)
            ready = all_ready[0]
            workers = [{side: worker for side, (worker, _) in pr.items()} for pr in all_ready]
            for j, pair_ready in enumerate(all_ready):
                for side, (_, r) in pair_ready.items():
                    print(f"{labels[side]} #{j}: cosmos3 from {r.cosmos3_file} (worker pid {r.pid})", flush=True)
            print(f"{2 * k} workers ready in {startup_s:.1f} s ({settings.worker_start})", flush=True)
            device_kind = ready["head"][1].environment.device_kind
            paired, unpaired = plan_cases(ready["head"][1].cases, ready["base"][1].cases, settings.keyword)
            policy = TrialPolicy.for_device(device_kind, settings.controls.rounds).at_least(
                max(min_trials_for(len(paired), settings.criteria.alpha), MIN_TRIALS_PER_PROCESS * k))
            config = settings.criteria.gate_config()
            rng = np.random.default_rng(TRIAL_ORDER_SEED)
            pairs = []
            for i, spec in enumerate(paired, 1):
                print(f"[{i}/{len(paired)}] {spec.name}: warm-up and trials", flush=True)
                outcome = measure_case(spec, workers if k > 1 else workers[0], policy, threshold=config.threshold_for(spec.name), rng=rng,
                                       seed=TRIAL_ORDER_SEED)
                if isinstance(outcome, PairedCase):
                    pairs.append(outcome)
                    ratio = math.exp(float(np.median(outcome.log_ratios)))
                    print(f"    {len(outcome.head_first)} trials, median paired ratio {ratio:.3f} "
                          f"(stopped: {outcome.stopped})", flush=True)
                else:
                    unpaired.append(outcome)
                    print(f"    {outcome.status}: {first_line(outcome.reason)}", flush=True)
        logs = {worker.log_path.stem.removeprefix("worker-"): worker.log_path.read_text(errors="replace")
                for pair in workers for worker in pair.values()}
    sides = {}
    for side, (_, r) in ready.items():
        commit, is_dirty = (head_commit, dirty) if side == "head" else (base_commit, False)
        env = dataclasses.replace(r.environment, commit=commit, commit_dirty=is_dirty, argv=settings.argv)
        sides[side] = Side(side, "working tree" if side == "head" else settings.base_ref, commit, is_dirty,
                           r.cosmos3_file, env)
    record = CompareRecord(
        base=sides["base"], head=sides["head"], criteria=settings.criteria,
        policy=policy, pairs=tuple(pairs), unpaired=tuple(unpaired),
        keyword=settings.keyword, argv=settings.argv, wall_s=time.perf_counter() - started, processes=k,
        startup_s=startup_s, worker_start=settings.worker_start,
    )
    return record, logs


def measure_run(settings: CompareSettings) -> tuple[CompareRecord, dict[str, str]]:
    """`measure` in a scratch folder, stopped cleanly by SIGINT, SIGTERM or SIGHUP: then the run's
    folder holds only interrupted.json (as a stopped `bench run` leaves it) and Interrupted is raised."""
    base_commit = resolve_ref(settings.repo, settings.base_ref)
    scratch = Path(tempfile.mkdtemp(prefix="cosmos3-compare-"))
    try:
        with stopped_by_signals():
            return measure(settings, base_commit, scratch)
    except Interrupted as stop:
        write_interrupted(settings.results_dir / settings.run_id, stop.signum, settings.argv)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the worktree inside is already removed, and pruned
