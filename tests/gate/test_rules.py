"""The regression gate on synthetic records: verdicts, failures, baseline compatibility, config checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bench.core.records import EquivalenceRecord, load_run, matches, merge_runs, run_to_dict
from bench.gate import rules as gate_module
from bench.gate import stats
from bench.gate.rules import GateConfig, check_compatible, compare_samples, evaluate
from cosmos3.errors import InputError

NAME = "latent_prep[single_frame-1280x720-81f]"


DEFAULT_CONFIG = GateConfig()


def gate_one(make_case, make_run, current_kwargs, baseline_kwargs=None, config=DEFAULT_CONFIG):
    baseline = make_run([make_case(**(baseline_kwargs or {}))])
    current = make_run([make_case(seed=1, **current_kwargs)])
    return evaluate(current, baseline, config)


def test_equal_distributions_pass(make_case, make_run):
    report = gate_one(make_case, make_run, {})
    assert report.passed and report.exit_code == 0
    (comp,) = report.comparisons
    assert comp.verdict == "ok" and comp.p_value > 0.01
    assert comp.ci_low < 1 < comp.ci_high


def test_clear_slowdown_fails_and_names_the_benchmark(make_case, make_run):
    report = gate_one(make_case, make_run, {"median_ms": 11.0})
    (comp,) = report.comparisons
    assert comp.verdict == "regression" and comp.p_value < 1e-6
    assert 1.05 < comp.ci_low < comp.ratio < comp.ci_high
    assert report.exit_code == 1
    assert len(report.failures) == 1 and report.failures[0].startswith(NAME)


def test_slowdown_inside_heavy_noise_is_not_significant(make_case, make_run):
    noisy = {"noise": 0.4, "rounds": 10}
    baseline = make_run([make_case(**noisy)])
    slower = make_case(**noisy, median_ms=11.0)  # the same draws, each 10% slower
    report = evaluate(make_run([slower]), baseline, GateConfig())
    (comp,) = report.comparisons
    assert comp.ratio == pytest.approx(1.1)
    assert comp.verdict == "not significant" and comp.p_value >= 0.01
    assert report.passed
    assert any(NAME in note and "noise" in note for note in report.notes)


def test_small_significant_slowdown_under_threshold_passes(make_case, make_run):
    report = gate_one(make_case, make_run, {"median_ms": 10.3, "noise": 0.005}, {"noise": 0.005})
    (comp,) = report.comparisons
    assert comp.p_value < 1e-6 and comp.verdict == "ok"
    assert report.passed
    assert any("within the allowed +5.0%" in note for note in report.notes)


def test_clear_speedup_is_faster(make_case, make_run):
    report = gate_one(make_case, make_run, {"median_ms": 8.0})
    assert report.comparisons[0].verdict == "faster" and report.passed


@pytest.mark.parametrize(
    ("overrides", "verdict"),
    [({NAME: 0.2}, "ok"), ({"latent_prep[*]": 0.2}, "ok"), ({"e2e[*]": 0.2}, "regression")],
)
def test_override_changes_the_verdict(make_case, make_run, overrides, verdict):
    config = GateConfig(latency_overrides=overrides)
    report = gate_one(make_case, make_run, {"median_ms": 11.0}, config=config)
    assert report.comparisons[0].verdict == verdict


def test_patterns_take_brackets_literally():
    assert matches("e2e[single_frame-1280x720-81f]", "e2e[*]")
    assert matches(NAME, NAME)
    assert not matches("vae_encode[1280x720-81f]", "e2e[*]")


def test_too_few_samples_fails(make_case, make_run):
    report = gate_one(make_case, make_run, {"rounds": 2})
    (comp,) = report.comparisons
    assert comp.verdict == "too few samples" and comp.p_value is None
    assert not report.passed and "too few for a one-sided test" in report.failures[0]


@pytest.mark.parametrize(("growth", "passed"), [(1.02, False), (1.005, True)])
def test_memory_threshold(make_case, make_run, growth, passed):
    resident = {"resident_mem_gib": 1.0}
    report = gate_one(make_case, make_run, {"peak_mem_gib": 1.0 + 3.0 * growth, **resident},
                      {"peak_mem_gib": 4.0, **resident})
    (mem,) = report.memory
    assert mem.ratio == pytest.approx(growth)
    assert report.passed is passed
    if not passed:
        assert mem.verdict == "regression" and NAME in report.failures[0] and "memory" in report.failures[0]


def test_memory_limit_is_on_the_working_set_not_the_peak(make_case, make_run):
    """1.33 GiB of weights resident must not dilute the limit: +2% of the stage's own memory fails
    though the peak grows by under 1%; more weights resident with the same working set passes."""
    base = {"peak_mem_gib": 2.45, "resident_mem_gib": 1.33}
    grown = gate_one(make_case, make_run, {"peak_mem_gib": 1.33 + 1.12 * 1.02, "resident_mem_gib": 1.33}, base)
    assert 2.45 * 1.01 > 1.33 + 1.12 * 1.02 and not grown.passed
    assert "working memory 1.142 GiB vs baseline 1.120 GiB" in grown.failures[0]
    more_weights = gate_one(make_case, make_run, {"peak_mem_gib": 3.45, "resident_mem_gib": 2.33}, base)
    assert more_weights.passed and more_weights.memory[0].ratio == pytest.approx(1.0)


def test_memory_not_measured(make_case, make_run):
    report = gate_one(make_case, make_run, {"peak_mem_gib": None}, {"peak_mem_gib": 4.0, "resident_mem_gib": 1.0})
    assert report.memory == () and report.passed  # nothing to compare, nothing reported as compared


def test_missing_new_and_excluded(make_case, make_run):
    kept, dropped = make_case(), make_case("vae_encode", None)
    baseline = make_run([kept, dropped])
    current = make_run([make_case(seed=1), make_case("latent_prep", "single_frame", width=832, height=480)])
    report = evaluate(current, baseline, GateConfig())
    assert report.missing_names == ("vae_encode[1280x720-81f]",)
    assert report.new_names == ("latent_prep[single_frame-832x480-81f]",)
    assert report.failures == (
        "vae_encode[1280x720-81f]: in the baseline but missing from this run (pass --exclude NAME if it was removed on purpose)",
    )
    excluded = evaluate(current, baseline, GateConfig(exclude={"vae_encode[*]"}))
    assert excluded.passed and excluded.missing_names == ()


def test_no_baseline_runs_only_in_run_checks(make_case, make_run):
    report = evaluate(make_run([make_case()]), None, GateConfig())
    assert report.passed and report.comparisons == () and report.baseline_environment is None
    assert "no baseline: latency and memory not gated" in report.notes


@pytest.mark.parametrize(("expand_ms", "passed"), [(10.2, False), (50.0, True)])
def test_speedup_check(make_case, make_run, expand_ms, passed):
    run = make_run([make_case(), make_case(strategy="expand", median_ms=expand_ms, seed=2)])
    report = evaluate(run, None, GateConfig())
    (check,) = report.speedups
    assert check.factor == pytest.approx(expand_ms / 10.0, rel=0.02)
    assert check.passed is passed and report.passed is passed
    if not passed:
        assert "latent_prep[single_frame-vs-expand-1280x720-81f]" in report.failures[0]
        assert "has the single_frame encode been reverted?" in report.failures[0]


def test_e2e_speedup_is_reported_not_gated(make_case, make_run):
    run = make_run([make_case("e2e", median_ms=1000.0), make_case("e2e", "expand", median_ms=1010.0)])
    report = evaluate(run, None, GateConfig())
    (check,) = report.speedups
    assert check.min_factor is None and check.passed and report.passed
    assert check.reduction == pytest.approx(1 - 1000 / 1010, abs=0.01)


def test_equivalence_false_fails(make_case, make_run):
    eq = EquivalenceRecord(equivalent=False, bitwise=False, max_abs_err=0.5, max_rel_err=0.1, rule="rel <= 0.0078")
    report = evaluate(make_run([make_case(equivalence=eq)]), None, GateConfig())
    assert report.failures == (
        f"{NAME}: outputs differ from expand (max abs err 0.5, max rel err 0.1; rule: rel <= 0.0078)",
    )


def test_failures_are_all_collected(make_case, make_run):
    baseline = make_run([make_case(peak_mem_gib=1.0, resident_mem_gib=0.5), make_case("vae_encode", None)])
    current = make_run([make_case(median_ms=12.0, peak_mem_gib=2.0, resident_mem_gib=0.5, seed=1)])
    assert len(evaluate(current, baseline, GateConfig()).failures) == 3  # latency, memory, missing


def test_corrupt_and_absent_baselines_raise(tmp_path, make_case, make_run):
    with pytest.raises(InputError, match="baseline: file does not exist"):
        load_run(tmp_path / "absent.json", what="baseline")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema_version": 1, "environment": ')
    with pytest.raises(InputError, match="baseline: must be readable JSON"):
        load_run(corrupt, what="baseline")
    truncated = tmp_path / "no_cases.json"
    data = run_to_dict(make_run([make_case()]))
    del data["cases"]
    truncated.write_text(json.dumps(data))
    with pytest.raises(InputError, match="is not a valid run record"):
        load_run(truncated, what="baseline")


def test_device_mismatch_refused_unless_allowed(make_env):
    h100, a100 = make_env(), make_env(device="NVIDIA A100-SXM4-80GB")
    with pytest.raises(InputError, match="--allow-device-mismatch") as err:
        check_compatible(h100, a100, allow_device_mismatch=False)
    assert "A100" in str(err.value) and "H100" in str(err.value)
    check_compatible(h100, a100, allow_device_mismatch=True)
    check_compatible(h100, h100, allow_device_mismatch=False)


def test_preset_mismatch_always_refused(make_env):
    wan22, tiny = make_env(), make_env(preset="tiny")
    with pytest.raises(InputError, match="baseline.preset"):
        check_compatible(wan22, tiny, allow_device_mismatch=True)


def test_baseline_with_negative_controls_refused(make_env):
    env = make_env()
    faulty = dataclasses.replace(env, negative_controls=("slowdown",))
    with pytest.raises(InputError, match="negative_controls"):
        check_compatible(env, faulty, allow_device_mismatch=False)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency_threshold": -0.1}, "latency_threshold"),
        ({"latency_threshold": float("nan")}, "latency_threshold"),
        ({"memory_threshold": -1}, "memory_threshold"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"min_speedups": {"single_frame": 0.5}}, "min_speedup"),
        ({"min_speedups": {"expand": 2.0}}, "min_speedups"),
        ({"latency_overrides": {"e2e[*]": -1}}, "latency_overrides"),
        ({"bootstrap_resamples": 0}, "bootstrap_resamples"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(InputError, match=field):
        GateConfig(**kwargs)


def merged_baseline(make_case, make_run, run_medians, noise=0.01):
    """A baseline merged from one run per median, each with low within-run noise."""
    return merge_runs([make_run([make_case(median_ms=m, noise=noise, seed=i)]) for i, m in enumerate(run_medians)])


def test_run_to_run_noise_widens_what_is_allowed(make_case, make_run):
    # Three quiet runs whose medians differ by 10% from each other: a run 10% above their pool is
    # a fresh process's draw, not a regression, though a within-run test finds it "significant".
    baseline = merged_baseline(make_case, make_run, [10.0, 11.0, 12.0])
    current = make_run([make_case(median_ms=12.1, seed=9)])
    report = evaluate(current, baseline, GateConfig())
    (comp,) = report.comparisons
    assert comp.noise_cv == pytest.approx(0.092, abs=2e-3) and comp.allowed == pytest.approx(3 * comp.noise_cv)
    assert comp.ratio > 1.05 and comp.p_value < 1e-6
    assert comp.verdict == "ok" and report.passed
    assert any("allowed +27.5% (3 x run-to-run CV 9.2%)" in note for note in report.notes)
    # The same shift with noise_k=1 is a regression: the knob does what it says.
    assert not evaluate(current, baseline, GateConfig(noise_k=1)).passed


def test_quiet_runs_keep_the_threshold_and_catch_ten_percent(make_case, make_run):
    baseline = merged_baseline(make_case, make_run, [10.0, 10.05, 9.95])
    report = evaluate(make_run([make_case(median_ms=11.0, seed=9)]), baseline, GateConfig())
    (comp,) = report.comparisons
    assert comp.allowed == 0.05 and comp.verdict == "regression"
    assert report.failures[0].startswith(NAME)


def test_two_runs_are_too_few_to_estimate_noise(make_case, make_run):
    baseline = merged_baseline(make_case, make_run, [10.0, 12.0])
    (comp,) = evaluate(make_run([make_case(median_ms=11.5, seed=9)]), baseline, GateConfig()).comparisons
    assert comp.noise_cv is None and comp.allowed == 0.05


def test_noise_k_must_not_be_negative():
    with pytest.raises(InputError, match="noise_k: must be >= 0"):
        GateConfig(noise_k=-1)


def test_a_rule_is_one_object_judging_a_run(make_case, make_run):
    """The interface every rule has: name, title, columns, judge() -> findings with row and failure."""
    from bench.gate.rules import RULES, Finding, Rule

    class OddRounds(Rule):
        name, title, columns = "odd", "Odd round counts", ("benchmark", "rounds")

        def judge(self, given):
            for case in given.current.cases:
                failure = f"{case.name}: odd round count" if case.rounds % 2 else None
                yield Finding(self.name, case.name, "odd" if failure else "ok", (case.name, str(case.rounds)), failure)

    run = make_run([make_case(rounds=7)])
    report = evaluate(run, None, GateConfig(), rules=(*RULES, OddRounds()))
    assert report.failures == (f"{NAME}: odd round count",) and report.of("odd")[0].row == (NAME, "7")
    assert {rule.name for rule in RULES} == {"errors", "latency", "device_time", "counters", "memory", "speedup",
                                           "equivalence", "stage_consistency", "coverage"}
    for rule in RULES:
        assert rule.title and rule.columns


def test_a_benchmark_that_raised_fails_the_gate(make_case, make_run):
    report = evaluate(make_run([make_case()]), None, GateConfig(),
                      failed_benchmarks=["e2e[single_frame-96x64-17f]: benchmark error: RuntimeError: out of memory"])
    assert report.exit_code == 1
    (finding,) = report.of("errors")
    assert finding.subject == "e2e[single_frame-96x64-17f]" and "out of memory" in finding.row[1]


@pytest.mark.parametrize(("device_kind", "single_ms", "gated", "passed"),
                         [("cuda", 12.0, True, False), ("cuda", 20.0, True, True), ("cpu", 12.0, False, True)])
def test_first_frame_2d_must_beat_single_frame_on_a_gpu(make_case, make_run, device_kind, single_ms, gated, passed):
    run = make_run([make_case("latent_prep", "first_frame_2d", median_ms=10.0),
                    make_case(median_ms=single_ms, seed=2)], device_kind=device_kind)
    (check,) = evaluate(run, None, GateConfig()).speedups
    assert (check.new, check.old) == ("first_frame_2d", "single_frame")
    assert (check.min_factor is not None) is gated and check.passed is passed
    if not passed:
        assert check.failure.startswith("latent_prep[first_frame_2d-vs-single_frame-1280x720-81f]: first_frame_2d "
                                        "is only 1.20x faster than single_frame")


def test_first_frame_2d_is_gated_only_at_the_sizes_a_measurement_supports(make_case, make_run):
    """1.5x rests on one measurement, at 1280x720: at 832x480 (launch-bound) the factor is reported only,
    so a GPU run there cannot fail on a factor nobody measured."""
    cases = [make_case("latent_prep", strategy, width=w, height=h, median_ms=ms, seed=i)
             for i, (w, h, strategy, ms) in enumerate([(1280, 720, "first_frame_2d", 10.0), (1280, 720, "single_frame", 12.0),
                                                      (832, 480, "first_frame_2d", 10.0), (832, 480, "single_frame", 12.0)])]
    checks = {c.resolution: c for c in evaluate(make_run(cases), None, GateConfig()).speedups}
    assert checks["1280x720"].min_factor == 1.5 and not checks["1280x720"].passed
    assert checks["832x480"].min_factor is None and checks["832x480"].passed
    assert checks["832x480"].factor == pytest.approx(checks["1280x720"].factor, rel=0.05)  # reported all the same


# ---- the statistics at their boundaries, and the config's rules, one by one -------------------------



@pytest.mark.parametrize("fields", [
    {"latency_threshold": 0.0}, {"device_threshold": 0.0}, {"memory_threshold": 0.0}, {"noise_k": 0.0},
    {"latency_overrides": {"a": 0.0}}, {"min_speedups": {"single_frame": 1.0}}, {"min_speedups": {"first_frame_2d": 1.0}}, {"bootstrap_resamples": 1},
    {"alpha": 0.999}])
def test_gate_config_accepts_the_edges_of_its_rules(fields):
    GateConfig(**fields)


@pytest.mark.parametrize("fields, message", [
    ({"latency_threshold": -0.01}, "latency_threshold: must be >= 0 (got -0.01)"),
    ({"noise_k": float("nan")}, "noise_k: must be >= 0 (got nan)"),
    ({"latency_overrides": {"e2e[*]": -1.0}}, "latency_overrides[e2e[*]]: must be >= 0 (got -1.0)"),
    ({"alpha": 1.0}, "alpha: must lie strictly between 0 and 1 (got 1.0)"),
    ({"alpha": 0.0}, "alpha: must lie strictly between 0 and 1 (got 0.0)"),
    ({"min_speedups": {"first_frame_2d": 0.99}}, "min_speedup_2d: must be >= 1 (got 0.99)"),
    ({"min_speedups": {"expand": 2.0}}, "min_speedups: must name strategies among single_frame, first_frame_2d (got 'expand')"),
    ({"bootstrap_resamples": 0}, "bootstrap_resamples: must be >= 1 (got 0)"),
])
def test_gate_config_names_the_broken_rule(fields, message):
    with pytest.raises(InputError) as err:
        GateConfig(**fields)
    assert str(err.value) == message


def test_gate_config_keeps_its_own_copies():
    overrides, exclude = {"a": 0.1}, ["x[*]"]
    config = GateConfig(latency_overrides=overrides, exclude=exclude)
    overrides["a"] = 0.9
    assert config.threshold_for("a") == 0.1 and config.latency_overrides == {"a": 0.1}
    assert config.exclude == frozenset({"x[*]"}) and isinstance(config.exclude, frozenset)


def test_compare_samples_bootstraps_with_the_configs_seed_and_resamples():
    rng = np.random.default_rng(0)
    cur, base = 11 * np.exp(0.05 * rng.standard_normal(30)), 10 * np.exp(0.05 * rng.standard_normal(30))
    c = compare_samples("c", cur, base, (), 0.05, GateConfig())
    assert (c.ci_low, c.ci_high) == stats.ratio_ci(cur, base)
    for config in (GateConfig(seed=1), GateConfig(bootstrap_resamples=50)):
        other = compare_samples("c", cur, base, (), 0.05, config)
        assert (other.ci_low, other.ci_high) == stats.ratio_ci(cur, base, resamples=config.bootstrap_resamples,
                                                               seed=config.seed)
        assert (other.ci_low, other.ci_high) != (c.ci_low, c.ci_high)


def _samples(center, n=8, spread=0.01):
    return [center * (1 + spread * (i - (n - 1) / 2) / n) for i in range(n)]


def test_compare_samples_at_the_significance_boundary():
    slow, fast = [1.35, 3.0, 4.0, 5.0, 6.0, 7.0], [1.0, 1.1, 1.2, 1.3, 1.4]  # one pair out of order
    p = stats.mann_whitney_p(slow, fast, "greater")
    assert p == pytest.approx(2 / 462)
    at_alpha = compare_samples("c", slow, fast, (), 0.05, GateConfig(alpha=p))
    assert at_alpha.verdict == "not significant" and at_alpha.note.endswith(f"p=0.0043 >= {p:g}: within the noise")
    assert compare_samples("c", slow, fast, (), 0.05, GateConfig(alpha=p * 1.001)).verdict == "regression"


def test_compare_samples_faster_needs_both_size_and_significance():
    base = _samples(10.0)
    faster_within = compare_samples("c", _samples(9.6), base, (), 0.05, GateConfig())  # -4%, significant
    assert faster_within.verdict == "ok" and faster_within.note == ""
    faster = compare_samples("c", _samples(9.0), base, (), 0.05, GateConfig())
    assert faster.verdict == "faster" and faster.note == ""
    noisy_slower = compare_samples("c", [9.0, 11.0, 9.5, 12.0, 10.5, 10.2, 9.9, 10.3], base, (), 0.05, GateConfig())
    assert noisy_slower.ratio > 1 and noisy_slower.p_value > 0.01
    assert noisy_slower.verdict == "ok" and noisy_slower.note == ""


def test_device_time_notes_say_device_time():
    c = compare_samples("c", _samples(10.2), _samples(10.0), (), 0.05, GateConfig(), what="device time")
    assert c.note.startswith("device time median 10.20 ms vs baseline 10.00 ms (+2.0%): significant")
    latency = compare_samples("c", _samples(10.2), _samples(10.0), (), 0.05, GateConfig())
    assert latency.note.startswith("median 10.20 ms vs baseline 10.00 ms (+2.0%): significant but within the allowed "
                                   "+5.0%") and latency.note.endswith("+5.0%")


@pytest.mark.parametrize("baseline_env, message", [
    ({"preset": "tiny"}, "baseline.preset: must equal this run's preset 'wan22' (got 'tiny')"),
    ({"device": "NVIDIA H200"}, ("baseline.device: was recorded on 'NVIDIA H200' (nvidia-h200) but this run is on "
                                 "'NVIDIA H100 80GB HBM3' (nvidia-h100-80gb-hbm3); pass --allow-device-mismatch to "
                                 "compare anyway (got 'nvidia-h200')")),
    ({"negative_controls": ("slowdown x=0.1",)},
     "baseline.negative_controls: must be empty: a baseline cannot carry an injected fault (got ['slowdown x=0.1'])"),
])
def test_check_compatible_names_what_differs(make_run, make_case, baseline_env, message):
    with pytest.raises(InputError) as err:
        check_compatible(make_run([make_case()]).environment, make_run([make_case()], **baseline_env).environment,
                         allow_device_mismatch=False)
    assert str(err.value) == message


# ---- significance and size at their exact boundaries -------------------------------------------------


def _exact(p_numerator: int):
    """5 current vs 6 baseline samples: every one of the 462 orderings is equally likely, so the exact
    one-sided Mann-Whitney p-value of an ordering is (orderings at least as extreme) / 462."""
    return GateConfig(alpha=p_numerator / 462, noise_k=0.0)


def test_faster_needs_p_strictly_below_alpha():
    # All five current samples below the baseline's but the largest, which beats one baseline sample: p = 2/462.
    cur, base = [5.0, 5.1, 5.2, 5.3, 10.05], [10.0, 10.1, 10.2, 10.3, 10.4, 10.5]
    assert stats.mann_whitney_p(np.array(cur), np.array(base), "less") == pytest.approx(2 / 462)
    at = compare_samples("c", cur, base, [], 0.05, _exact(2))
    assert at.verdict == "ok" and at.note == ""
    assert compare_samples("c", cur, base, [], 0.05, _exact(3)).verdict == "faster"


def test_a_significant_change_within_the_limit_is_noted_only_below_alpha():
    cur, base = [10.2, 10.3, 10.4, 10.5, 10.25], [10.0, 10.05, 10.1, 10.15, 10.21, 10.01]
    assert stats.mann_whitney_p(np.array(cur), np.array(base), "greater") == pytest.approx(2 / 462)
    at = compare_samples("c", cur, base, [], 0.05, _exact(2))
    assert at.verdict == "ok" and at.note == ""
    above = compare_samples("c", cur, base, [], 0.05, _exact(3))
    assert above.verdict == "ok" and "significant but within the allowed +5.0%" in above.note


def test_an_unchanged_median_is_never_noted_as_slower():
    """Medians equal (ratio exactly 1), the rest of the current samples higher: significant, but not slower."""
    cur, base = [10.0, 10.0, 10.0, 12.0, 12.0, 12.0, 10.0], [8.0, 8.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    result = compare_samples("c", cur, base, [], 0.05, GateConfig(alpha=0.05))
    assert result.ratio == 1.0 and result.p_value < 0.05
    assert result.verdict == "ok" and result.note == ""


def test_device_time_needs_counters_on_both_sides(make_case, make_run):
    from bench.core.records import KernelStat, WorkCounters

    counters = WorkCounters(source="cuda", profiled_rounds=2, kernel_launches=1, h2d_copies=0, h2d_bytes=0,
                            d2h_copies=0, d2h_bytes=0, syncs=0, flops=0, device_ms_samples=(1.0, 1.0),
                            top_kernels=(KernelStat("k", 1, 1.0),))
    with_counters, without = make_case(counters=counters), make_case()
    assert gate_module.compare_device_time(with_counters, without, GateConfig()) is None
    assert gate_module.compare_device_time(without, with_counters, GateConfig()) is None


def test_unmeasured_memory_keeps_what_was_measured(make_case):
    config = GateConfig(memory_threshold=0.02)
    current = make_case(peak_mem_gib=3.0, resident_mem_gib=1.0)
    baseline = make_case(peak_mem_gib=2.5)
    m = gate_module.compare_memory(current, baseline, config)
    assert m == gate_module.MemoryComparison(current.name, None, 2.0, None, "not measured", 0.02,
                                             baseline_peak_gib=2.5, current_peak_gib=3.0)
    unmeasured_now = gate_module.compare_memory(baseline, current, config)
    assert (unmeasured_now.baseline_gib, unmeasured_now.current_gib) == (2.0, None)
    measured = gate_module.compare_memory(current, make_case(peak_mem_gib=1.0, resident_mem_gib=1.0), config)
    assert (measured.ratio, measured.verdict, measured.threshold) == (float("inf"), "regression", 0.02)


def test_a_speedup_is_checked_in_every_group_that_has_both_strategies(make_case, make_run):
    run = make_run([make_case(strategy="expand", num_frames=1, median_ms=20.0),  # a group without its pair
                    make_case(strategy="single_frame", median_ms=10.0), make_case(strategy="expand", median_ms=20.0)])
    checks = gate_module.speedup_checks(run, GateConfig())
    assert [(c.resolution, c.num_frames, c.factor) for c in checks] == [("1280x720", 81, 2.0)]


def test_the_report_keeps_the_baselines_environment(make_case, make_run):
    baseline = make_run([make_case()], device="NVIDIA H200")
    report = evaluate(make_run([make_case()]), baseline, GateConfig())
    assert report.baseline_environment == baseline.environment
    assert evaluate(make_run([make_case()]), None, GateConfig()).baseline_environment is None


def test_an_equivalence_finding_carries_its_record(make_case, make_run):
    from tests.conftest import equivalence

    eq = equivalence()
    run = make_run([make_case(equivalence=eq)])
    (finding,) = evaluate(run, None, GateConfig()).of("equivalence")
    assert finding.detail is eq


def test_a_stage_exactly_at_its_allowance_is_consistent(make_case, make_run):
    stage = make_case(median_ms=10.0, noise=0.0, rounds=5)
    e2e = make_case("e2e", median_ms=100.0, noise=0.0, rounds=5, stage_samples_ms={"latent_preparation": (15.0,) * 5})
    (finding,) = evaluate(make_run([stage, e2e]), None, GateConfig()).of("stage_consistency")
    assert finding.verdict == "ok" and finding.row[-2:] == ("+-5.00 ms", "ok")
    over = make_case("e2e", median_ms=100.0, noise=0.0, rounds=5, stage_samples_ms={"latent_preparation": (15.01,) * 5})
    (finding,) = evaluate(make_run([stage, over]), None, GateConfig()).of("stage_consistency")
    assert finding.verdict == "inconsistent"


def test_only_latent_prep_and_e2e_cases_are_paired_by_strategy(make_case, make_run):
    run = make_run([make_case("vae_encode", strategy="single_frame", median_ms=10.0),
                    make_case("vae_encode", strategy="expand", median_ms=20.0)])
    assert gate_module.speedup_checks(run, GateConfig()) == ()
