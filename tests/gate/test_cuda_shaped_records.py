"""CUDA-shaped records through every reader of device time: the gate, a baseline merge of 1, 2 and 3
runs, compare's judge and calibration's analysis.

The CPU records of the other tests have no device time, so the branches that read it would first run
on a GPU. These records are shaped as the GPU run writes them: source "cuda", five profiled rounds per
case (bench.measure.counters.PROFILED_ROUNDS) or three (the long-round policy of runs recorded before it), device
time a little under the wall time, kernels by their cuDNN names. An unchanged run passes each reader;
one slowed by 10% (device and wall time alike) fails each, on device time as well as latency.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.calibrate import gate as calibrate
from bench.compare.judge import judge
from bench.compare.policy import TrialPolicy
from bench.compare.record import CompareRecord, Criteria, PairedCase, Side
from bench.core.records import CaseResult, CaseSpec, EquivalenceRecord, KernelStat, RunRecord, WorkCounters, merge_runs
from bench.gate import rules as gate
from bench.measure.counters import PROFILED_ROUNDS
from tests.conftest import _env

# (spec, wall median ms, device median ms, timed rounds, kernel launches): a 720p row of the H100 run.
CASES = (
    (CaseSpec("latent_prep", 1280, 720, 81, "single_frame"), 22.0, 20.5, 60, 412),
    (CaseSpec("latent_prep", 1280, 720, 81, "expand"), 1577.0, 1561.0, 5, 9_870),
    (CaseSpec("vae_encode", 1280, 720, 1), 21.0, 19.8, 60, 398),
)
KERNELS = ("void cudnn::cnn::conv3d_implicit_gemm_kernel", "void at::native::vectorized_elementwise_kernel")
BITWISE = EquivalenceRecord(equivalent=True, bitwise=True, max_abs_err=0.0, max_rel_err=0.0)
# Run-to-run spread of a median between processes on the GPU (the design notes: 2%), within a run 0.5%.
RUN_SPREAD, ROUND_SPREAD = 0.004, 0.005


def cuda_case(spec: CaseSpec, wall_ms: float, device_ms: float, rounds: int, launches: int, *,
              rng: np.random.Generator, profiled: int, slower: float = 1.0) -> CaseResult:
    shift = slower * float(np.exp(RUN_SPREAD * rng.standard_normal()))
    samples = wall_ms * shift * np.exp(ROUND_SPREAD * rng.standard_normal(rounds))
    device = device_ms * shift * np.exp(ROUND_SPREAD / 5 * rng.standard_normal(profiled))
    counters = WorkCounters(
        source="cuda", profiled_rounds=profiled, kernel_launches=launches, h2d_copies=1, h2d_bytes=4 * 3 * 720 * 1280,
        d2h_copies=0, d2h_bytes=0, syncs=1, flops=4_300_000_000_000,
        device_ms_samples=tuple(float(x) for x in device),
        top_kernels=(KernelStat(KERNELS[0], launches - 100, float(np.median(device)) * 0.9),
                     KernelStat(KERNELS[1], 100, float(np.median(device)) * 0.1)))
    return CaseResult(spec=spec, samples_ms=tuple(float(x) for x in samples), peak_mem_gib=2.4, resident_mem_gib=1.33,
                      warmup_ms=(float(samples[0]) * 3,), counters=counters,
                      equivalence=BITWISE if spec.strategy == "single_frame" else None)


def cuda_run(seed: int, *, profiled: int = PROFILED_ROUNDS, slower: float = 1.0) -> RunRecord:
    rng = np.random.default_rng(seed)
    cases = tuple(cuda_case(*row, rng=rng, profiled=profiled, slower=slower) for row in CASES)
    return RunRecord(environment=_env(date_utc=f"2026-12-0{seed % 9 + 1}T00:00:00Z"), cases=cases)


def baseline_of(n_runs: int, profiled: int = PROFILED_ROUNDS) -> RunRecord:
    runs = [cuda_run(seed, profiled=profiled) for seed in range(1, n_runs + 1)]
    return runs[0] if n_runs == 1 else merge_runs(runs)


def device_verdicts(report: gate.GateReport) -> dict[str, str]:
    return {f.subject: f.verdict for f in report.of("device_time")}


@pytest.mark.parametrize("n_runs", [1, 2, 3])
def test_an_unchanged_cuda_run_passes_against_a_baseline_of_one_two_or_three_runs(n_runs):
    baseline = baseline_of(n_runs)
    assert all(len(c.counters.device_ms_samples) == PROFILED_ROUNDS * n_runs for c in baseline.cases)
    report = gate.evaluate(cuda_run(10), baseline, gate.GateConfig())
    assert report.passed, report.failures
    # Device time judged every case (5 against 5 and more can reach alpha), and found nothing.
    assert device_verdicts(report) == {spec.name: gate.OK for spec, *_ in CASES}


@pytest.mark.parametrize("n_runs", [1, 2, 3])
def test_a_cuda_run_slowed_by_ten_percent_fails_on_device_time_too(n_runs):
    report = gate.evaluate(cuda_run(10, slower=1.10), baseline_of(n_runs), gate.GateConfig())
    assert not report.passed
    assert device_verdicts(report) == {spec.name: gate.REGRESSION for spec, *_ in CASES}
    assert {f.subject for f in report.of("latency") if f.failure} >= {CASES[0][0].name, CASES[2][0].name}


@pytest.mark.parametrize("n_runs", [1, 2])
def test_a_baseline_profiled_three_rounds_a_case_cannot_judge_device_time_and_says_so(n_runs):
    """Three rounds against three (or six) can never reach p < 0.01: the rule says it cannot judge and
    passes; latency still judges the case, so a slowed run still fails."""
    baseline = baseline_of(n_runs, profiled=3)
    report = gate.evaluate(cuda_run(10, profiled=3), baseline, gate.GateConfig())
    assert report.passed, report.failures
    assert set(device_verdicts(report).values()) == {gate.CANNOT_JUDGE}
    assert any("device time: only 3 samples" in n and "cannot judge" in n for n in report.notes)
    slowed = gate.evaluate(cuda_run(10, profiled=3, slower=1.10), baseline, gate.GateConfig())
    assert set(device_verdicts(slowed).values()) == {gate.CANNOT_JUDGE}
    assert not slowed.passed and all(not f.startswith("device") for f in slowed.failures)


def test_a_merge_of_cuda_runs_keeps_every_device_sample_and_each_runs_median():
    runs = [cuda_run(seed) for seed in (1, 2, 3)]
    merged = merge_runs(runs)
    for i, case in enumerate(merged.cases):
        assert case.counters.device_ms_samples == tuple(x for r in runs for x in r.cases[i].counters.device_ms_samples)
        assert case.run_device_medians_ms == tuple(r.cases[i].counters.device_ms for r in runs)
        assert case.counters.profiled_rounds == 3 * PROFILED_ROUNDS and case.counters.varying_counters == ()
    again = merge_runs([merged, cuda_run(4)])  # a merged baseline merged once more keeps its runs
    assert all(len(c.run_device_medians_ms) == 4 for c in again.cases)


def compare_record(head: RunRecord, base: RunRecord) -> CompareRecord:
    sides = {name: Side(name, name, "0" * 40, False, "/x/cosmos3/__init__.py", run.environment)
             for name, run in (("head", head), ("base", base))}
    pairs = []
    for h, b in zip(head.cases, base.cases, strict=True):
        n = min(len(h.samples_ms), len(b.samples_ms))
        pairs.append(PairedCase(dataclasses.replace(h, samples_ms=h.samples_ms[:n]),
                                    dataclasses.replace(b, samples_ms=b.samples_ms[:n]), (True,) * n, "budget"))
    return CompareRecord(base=sides["base"], head=sides["head"], criteria=Criteria(),
                             policy=TrialPolicy(), pairs=tuple(pairs))


def test_compares_judge_reads_cuda_device_time_of_both_sides():
    unchanged = judge(compare_record(cuda_run(10), cuda_run(11)))
    assert unchanged.passed, unchanged.failures
    assert {f.rule for f in unchanged.findings} >= {"device_time", "counters", "memory"}
    slowed = judge(compare_record(cuda_run(10, slower=1.10), cuda_run(11)))
    device = [f for f in slowed.failures if "device time" in f]
    assert len(device) == len(CASES), slowed.failures
    legacy = judge(compare_record(cuda_run(10, profiled=3), cuda_run(11, profiled=3)))
    assert legacy.passed and {f.verdict for f in legacy.findings if f.rule == "device_time"} == {gate.CANNOT_JUDGE}


@pytest.mark.parametrize("profiled", [3, PROFILED_ROUNDS])
def test_calibration_reads_cuda_records(profiled):
    baseline = [cuda_run(seed, profiled=profiled) for seed in (1, 2, 3)]
    aa = [cuda_run(seed, profiled=profiled) for seed in range(10, 16)]
    injected = {0.10: [cuda_run(seed, profiled=profiled, slower=1.10) for seed in range(20, 24)]}
    cal = calibrate.analyse(baseline, aa, injected, gate.GateConfig())
    rows = {(r.case, r.metric): r for r in cal.rows}
    assert all(r.false_alarms == 0 for r in rows.values())
    name = CASES[0][0].name
    assert rows[(name, "latency")].detections[0].detected == 4
    # The merged baseline holds 3 x profiled device samples: enough for the test against 5 and against 3.
    assert rows[(name, "device_time")].detections[0].detected == 4
    assert [d.varying_counters for d in cal.determinism] == [()] * len(CASES)
