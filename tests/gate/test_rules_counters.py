"""The counter and device-time rules on synthetic records: what fails, what it says, what it leaves alone."""

from __future__ import annotations

import dataclasses

import pytest

from bench.core.records import KernelStat, WorkCounters, merge_counters, merge_runs
from bench.gate.rules import GateConfig, evaluate

NAME = "latent_prep[single_frame-1280x720-81f]"


def counters(*, device_ms=(10.0, 10.1, 9.9, 10.05, 9.95), **counts) -> WorkCounters:
    base = {"kernel_launches": 500, "h2d_copies": 1, "h2d_bytes": 4096, "d2h_copies": 0, "d2h_bytes": 0, "syncs": 0,
                "flops": 4_300_000_000_000}
    base.update(counts)
    kernels = (KernelStat("void conv_kernel<bf16>", 120, 6.0), KernelStat("elementwise_add", 80, 0.5))
    return WorkCounters(source="cuda", profiled_rounds=len(device_ms), device_ms_samples=tuple(device_ms),
                        top_kernels=kernels, **base)


def gate(make_case, make_run, current: WorkCounters, baseline: WorkCounters, config=None):
    return evaluate(make_run([make_case(seed=1, counters=current)]), make_run([make_case(counters=baseline)]),
                    config or GateConfig())


def test_identical_counters_pass(make_case, make_run):
    report = gate(make_case, make_run, counters(), counters())
    assert report.passed and [f.verdict for f in report.of("counters")] == ["ok"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"syncs": 1}, "+1 synchronization per round (syncs 0 -> 1)"),
        ({"kernel_launches": 512}, "+12 kernel launches per round (kernel_launches 500 -> 512)"),
        ({"h2d_copies": 2, "h2d_bytes": 8192}, ("+1 host-to-device copy per round (h2d_copies 1 -> 2); "
                                               "+4096 bytes host-to-device per round")),
        ({"d2h_copies": 1}, "+1 device-to-host copy per round"),
        ({"flops": 4_300_000_000_001}, "+1 FLOP per round"),
    ],
)
def test_any_increase_fails_and_says_what_changed(make_case, make_run, change, message):
    report = gate(make_case, make_run, counters(**change), counters())
    assert not report.passed
    (failure,) = report.failures
    assert failure.startswith(f"{NAME}: ") and message in failure, failure


def test_the_message_names_the_kernel_whose_launches_grew(make_case, make_run):
    grown = dataclasses.replace(counters(kernel_launches=512), top_kernels=(
        KernelStat("void conv_kernel<bf16>", 120, 6.0), KernelStat("elementwise_add", 92, 0.6)))
    (failure,) = gate(make_case, make_run, grown, counters()).failures
    assert "[+12 launches of elementwise_add]" in failure


def test_a_decrease_is_an_improvement_not_a_failure(make_case, make_run):
    report = gate(make_case, make_run, counters(kernel_launches=400), counters())
    assert report.passed and report.of("counters")[0].verdict == "improved"
    assert any("kernel_launches 500 -> 400" in note for note in report.notes)


def test_a_counter_that_varied_between_rounds_is_not_gated(make_case, make_run):
    unstable = dataclasses.replace(counters(syncs=3), varying_counters=("syncs",))
    report = gate(make_case, make_run, unstable, counters())
    assert report.passed and report.of("counters")[0].verdict == "varies"


def test_device_time_has_its_own_threshold(make_case, make_run):
    slower = counters(device_ms=tuple(x * 1.05 for x in (10.0, 10.1, 9.9, 10.05, 9.95)))
    report = gate(make_case, make_run, slower, counters())
    (finding,) = report.of("device_time")
    assert finding.verdict == "regression" and "device time regression" in finding.failure
    assert "device time median 10.50 ms vs baseline 10.00 ms (+5.0%) > +3.0%" in finding.failure
    # 5% is within a 10% device threshold, and a 2% change within the default 3%.
    assert gate(make_case, make_run, slower, counters(), GateConfig(device_threshold=0.10)).passed
    slightly = counters(device_ms=tuple(x * 1.02 for x in (10.0, 10.1, 9.9, 10.05, 9.95)))
    assert gate(make_case, make_run, slightly, counters()).passed


def test_device_time_allows_for_run_to_run_noise_of_a_merged_baseline(make_case, make_run):
    runs = [make_run([make_case(seed=i, counters=counters(device_ms=tuple(m * x for x in (1, 1.001, 0.999, 1, 1))))])
            for i, m in enumerate((10.0, 10.6, 11.2))]
    baseline = merge_runs(runs)
    assert len(baseline.cases[0].run_device_medians_ms) == 3
    current = make_run([make_case(seed=9, counters=counters(device_ms=(11.0,) * 5))])
    (finding,) = evaluate(current, baseline, GateConfig()).of("device_time")
    assert finding.detail.allowed > 0.03 and finding.verdict == "ok"


def test_without_counters_neither_rule_reports(make_case, make_run):
    report = evaluate(make_run([make_case(seed=1)]), make_run([make_case(counters=counters())]), GateConfig())
    assert report.of("counters") == () and report.of("device_time") == ()


def test_merged_counters_pool_device_time_and_flag_counts_that_differ():
    merged = merge_counters([counters(), counters(syncs=1)])
    assert merged.profiled_rounds == 10 and len(merged.device_ms_samples) == 10
    assert merged.syncs == 1 and merged.varying_counters == ("syncs",)
    assert merge_counters([counters(), counters()]).varying_counters == ()


def test_a_grown_counter_without_a_kernel_change_has_no_kernel_list(make_case, make_run):
    report = gate(make_case, make_run, counters(syncs=1), counters())
    assert report.failures == (f"{NAME}: +1 synchronization per round (syncs 0 -> 1)",)
    (finding,) = report.of("counters")
    assert finding.detail == (counters(), counters(syncs=1))  # (baseline, current)


def test_a_passing_counter_finding_has_no_failure(make_case, make_run):
    (finding,) = gate(make_case, make_run, counters(), counters()).of("counters")
    assert finding.failure is None and finding.note == ""


def test_every_fewer_and_every_varying_counter_is_listed(make_case, make_run):
    (finding,) = gate(make_case, make_run, counters(kernel_launches=400, syncs=0, h2d_copies=0, h2d_bytes=0),
                      counters()).of("counters")
    assert finding.note == "fewer: kernel_launches 500 -> 400, h2d_copies 1 -> 0, h2d_bytes 4096 -> 0"
    varying = dataclasses.replace(counters(), varying_counters=("syncs", "flops"))
    (finding,) = gate(make_case, make_run, varying, counters()).of("counters")
    assert finding.note == "counters that varied between rounds, not gated: flops, syncs"


def test_a_merged_baseline_says_whose_counters_agreed_in_every_run(make_case, make_run):
    """`bench baseline` from several runs prints this line: the determinism the counter rules rest on."""
    from bench.cli.baseline import counter_agreement

    def same(seed: int = 0) -> list:  # two runs of one code: the same counts, other samples (merge refuses a copy)
        return [make_case(counters=counters(), seed=seed), make_case(num_frames=33, counters=counters(), seed=seed),
                make_case("vae_encode", None, seed=seed)]

    merged = merge_runs([make_run(same()), make_run(same(1))])
    assert counter_agreement(merged, 2) == ("work counters identical in all 2 runs and every profiled round: "
                                            "2 of 2 profiled benchmarks")
    other = [make_case(counters=counters(syncs=1), seed=2), make_case(num_frames=33, counters=counters(), seed=2),
             make_case("vae_encode", None, seed=2)]
    merged = merge_runs([make_run(same()), make_run(other), make_run(same(3))])
    assert counter_agreement(merged, 3) == (
        "work counters identical in all 3 runs and every profiled round: 1 of 2 profiled benchmarks; these varied, "
        f"and the gate will not judge them:\n- {NAME}: syncs")


def test_every_counter_is_one_entry_that_the_record_the_message_and_the_table_read():
    """bench.core.records.COUNTERS: each is a WorkCounters field, has its words in the gate's message, and the table's
    columns are the entries that name one, in order; a counter added there reaches all three."""
    import dataclasses as dc

    from bench.core.records import COUNTERS, COUNTS, WorkCounters
    from bench.gate.rules import _COUNTER_UNITS, CounterRule

    fields = {f.name for f in dc.fields(WorkCounters)}
    assert all(c.name in fields for c in COUNTERS)
    assert set(_COUNTER_UNITS) == {c.name for c in COUNTERS} and COUNTS == tuple(c.name for c in COUNTERS[:-1])
    assert CounterRule.columns == ("benchmark", "kernel launches", "syncs", "H2D copies", "D2H copies", "FLOPs",
                                   "verdict")  # as before the registry
