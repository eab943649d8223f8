"""The gate on one scenario that reaches every rule and every verdict, against a reviewed golden file.

Each finding is written out whole: rule, subject, verdict, the report row, the failure and the note.
A change to any of them (a verdict at a boundary, a number in a row, the words of a failure) shows
as a diff of tests/golden/gate_scenario.txt. Samples are constant within a side, so every bootstrap
interval is exact and the file does not move with scipy's resampling.

After a deliberate change to the gate's output: `UPDATE_GOLDEN=1 pytest tests/gate/test_rules_golden.py`,
then read the diff before committing it.
"""

from __future__ import annotations

import os

from bench.core.records import CaseResult, CaseSpec, EquivalenceRecord, KernelStat, RunRecord, WorkCounters
from bench.gate.rules import GateConfig, evaluate
from tests.conftest import _env
from tests.repo import GOLDEN

SCENARIO = GOLDEN / "gate_scenario.txt"


def case(benchmark, strategy, ms, *, frames=81, n=6, size=(1280, 720), **fields) -> CaseResult:
    return CaseResult(spec=CaseSpec(benchmark, *size, frames, strategy), samples_ms=(float(ms),) * n, **fields)


def counters(*, source="cuda", device_ms=None, launches=100, syncs=0, h2d=1, d2h=0, flops=10**9,
             kernels=(("gemm", 10),), varying=()) -> WorkCounters:
    cuda = source == "cuda"
    return WorkCounters(
        source=source, profiled_rounds=5, kernel_launches=launches, h2d_copies=h2d, h2d_bytes=4 * h2d,
        d2h_copies=d2h, d2h_bytes=4 * d2h, syncs=syncs, flops=flops,
        device_ms_samples=(float(device_ms),) * 5 if cuda else (),
        top_kernels=tuple(KernelStat(name, k, 0.5 if cuda else None) for name, k in kernels),
        varying_counters=varying)


def equivalence(equivalent, bitwise, err=0.0, rule="") -> EquivalenceRecord:
    return EquivalenceRecord(equivalent, bitwise, err, err / 2, "expand", rule)


LP, E2E, VAE = "latent_prep", "e2e", "vae_encode"


def scenario() -> tuple[RunRecord, RunRecord]:
    baseline = [
        case(LP, "single_frame", 10, peak_mem_gib=2.0, resident_mem_gib=1.0, counters=counters(device_ms=5)),
        case(LP, "expand", 40, peak_mem_gib=3.0, resident_mem_gib=1.0, counters=counters(device_ms=30)),
        case(LP, "single_frame", 10, frames=1, counters=counters(device_ms=4, launches=50)),
        case(LP, "expand", 10, frames=1, counters=counters(device_ms=4, syncs=2, varying=("syncs",))),
        case(VAE, None, 20, frames=1, peak_mem_gib=1.0, resident_mem_gib=1.0,
             counters=counters(source="cpu")),
        case(VAE, None, 30, frames=5, n=3),
        case(E2E, "single_frame", 1000, peak_mem_gib=10.0, resident_mem_gib=8.0, run_medians_ms=(1000, 1050, 950),
             counters=counters(device_ms=900, syncs=1)),
        case(E2E, "expand", 1200),
        case("denoise", None, 50, frames=21),  # missing from the run
        case("denoise", None, 60, frames=41),
        case("denoise", None, 70, frames=61),  # missing, but excluded
        case(LP, "first_frame_2d", 6, counters=counters(device_ms=3)),
    ]
    current = [
        # A slowdown past the threshold; more device time; an extra sync and more launches; more memory.
        case(LP, "single_frame", 12, peak_mem_gib=2.5, resident_mem_gib=1.0,
             counters=counters(device_ms=6, syncs=1, launches=102, kernels=(("gemm", 11), ("copy", 1))),
             equivalence=equivalence(True, True)),
        # Slower but within 5%, significant; memory exactly at its limit (+1%); fewer launches.
        case(LP, "expand", 41, peak_mem_gib=2.02, resident_mem_gib=0.0,
             counters=counters(device_ms=30.9, launches=90)),
        # One frame: the speedup is reported, not gated. Faster; device time within 3%.
        case(LP, "single_frame", 8, frames=1, counters=counters(device_ms=4.1, launches=50),
             equivalence=equivalence(True, False, 1e-3, "normwise relative error <= 0.0078")),
        # Exactly 5% faster: not "faster", which must exceed the threshold.
        case(LP, "expand", 9.5, frames=1, counters=counters(device_ms=4, syncs=3, varying=("syncs",))),
        # Exactly at its 20% override: ok. Counters from another source are not compared. Memory 0 -> 0.
        case(VAE, None, 24, frames=1, peak_mem_gib=1.0, resident_mem_gib=1.0, counters=counters(device_ms=1)),
        case(VAE, None, 45, frames=5, n=3),  # too few samples to test
        # Within 3x the run-to-run CV of the baseline's run medians; the latent stage costs more than alone.
        case(E2E, "single_frame", 1120, peak_mem_gib=10.0, resident_mem_gib=8.0,
             stage_samples_ms={"latent_preparation": (20.0,) * 6, "denoising": (900.0,) * 6},
             counters=counters(device_ms=900, syncs=1), equivalence=equivalence(False, False, 0.5)),
        case(E2E, "expand", 1200, stage_samples_ms={"latent_preparation": (44.0,) * 6},
             equivalence=equivalence(False, False, 0.25, "bitwise")),
        case("denoise", None, 50, frames=41),
        # New cases. Two frames: the smallest count whose speedup is gated; 1.2x fails it.
        case(LP, "single_frame", 5, frames=2, size=(96, 64)),
        case(LP, "expand", 6, frames=2, size=(96, 64)),
        case(LP, "single_frame", 5, frames=2, size=(128, 64)),  # exactly 2x: passes
        case(LP, "expand", 10, frames=2, size=(128, 64)),
        case(LP, "first_frame_2d", 8, counters=counters(device_ms=3)),  # exactly 1.5x faster than single_frame
    ]
    return (RunRecord(environment=_env(device="NVIDIA H200"), cases=tuple(current)),
            RunRecord(environment=_env(), cases=tuple(baseline)))


def render(report) -> str:
    lines = []
    for f in report.findings:
        lines.append(f"{f.rule} | {f.subject} | {f.verdict}")
        lines.append("    row: " + " | ".join(f.row))
        if f.failure:
            lines.append(f"    failure: {f.failure}")
        if f.note:
            lines.append(f"    note: {f.note}")
    lines += [f"NOTE {n}" for n in report.notes]
    lines.append(f"passed={report.passed} exit_code={report.exit_code}")
    lines.append(f"new={list(report.new_names)} missing={list(report.missing_names)}")
    return "\n".join(lines) + "\n"


def test_the_gate_on_the_scenario_matches_the_reviewed_golden_file():
    current, baseline = scenario()
    config = GateConfig(exclude=frozenset({"denoise[1280x720-61f]"}), latency_overrides={"vae_encode[*]": 0.2})
    assert config.min_speedups == {"single_frame": 2.0, "first_frame_2d": 1.5} and config.memory_threshold == 0.01
    report = evaluate(current, baseline, config, failed_benchmarks=["e2e[single_frame-832x480-81f]: CUDA out of memory"],
                      notes=["a note from the caller"])
    text = render(report)
    if os.environ.get("UPDATE_GOLDEN"):
        SCENARIO.write_text(text)
    assert text == SCENARIO.read_text()
