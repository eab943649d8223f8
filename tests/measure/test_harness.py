"""bench.measure.harness in-process: the round policy, the run controls, the injected negative controls, the
record fields and one measured case on pytest-benchmark's own fixture (CPU, tiny sizes, seconds)."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import time

import pytest
import torch

from bench.core.records import CaseSpec, WorkCounters
from bench.measure import harness
from bench.measure.harness import CONTROLS_ENV, RoundPolicy, RunControls, equivalence_for, inject, measure, record_case
from cosmos3.errors import InputError
from tests import tiny

CPU = torch.device("cpu")


# --- RoundPolicy ---------------------------------------------------------------------------------

def test_round_policy_defaults_are_the_documented_ones():
    assert RoundPolicy() == RoundPolicy(warmup_rounds=2, min_rounds=5, max_rounds=60, target_ms=2000.0)
    assert harness.MIN_ROUNDS == 5


@pytest.mark.parametrize("fields", [
    {"warmup_rounds": 1}, {"min_rounds": 5, "max_rounds": 5}, {"target_ms": 1e-6}, {"min_rounds": 7, "max_rounds": 8}])
def test_round_policy_accepts_the_edges_of_its_rules(fields):
    RoundPolicy(**fields)


@pytest.mark.parametrize("fields, rule", [
    ({"warmup_rounds": 0}, "WARMUP >= 1"),
    ({"warmup_rounds": -1}, "WARMUP >= 1"),
    ({"min_rounds": 4}, "5 <= MIN <= MAX"),
    ({"min_rounds": 6, "max_rounds": 5}, "5 <= MIN <= MAX"),
    ({"min_rounds": 5, "max_rounds": 4}, "5 <= MIN <= MAX"),
    ({"target_ms": 0.0}, "finite TARGET_MS > 0"),
    ({"target_ms": -1.0}, "finite TARGET_MS > 0"),
    ({"target_ms": math.nan}, "finite TARGET_MS > 0"),
    ({"target_ms": math.inf}, "finite TARGET_MS > 0"),
])
def test_round_policy_refuses_what_could_not_measure(fields, rule):
    with pytest.raises(InputError) as err:
        RoundPolicy(**fields)
    assert err.value.field == "rounds" and rule in err.value.rule


@pytest.mark.parametrize("round_ms, rounds", [
    (1000.0, 25),  # 25 000 / 1000 exactly
    (1001.0, 25),  # ceil(24.98)
    (999.0, 26),  # ceil(25.03)
    (5000.0, 5),  # clamped up to MIN
    (10_000.0, 5),
    (100.0, 60),  # clamped down to MAX (250 wanted)
    (416.0, 60),  # ceil(60.1) = 61, clamped down to MAX
])
def test_rounds_fill_the_target_within_the_clamps(round_ms, rounds):
    policy = RoundPolicy(warmup_rounds=1, min_rounds=5, max_rounds=60, target_ms=25_000.0)
    assert policy.rounds_for(round_ms) == rounds


def test_a_zero_round_time_asks_for_the_target_over_a_microsecond():
    """No division by zero: a round below 1 us counts as 1 us."""
    policy = RoundPolicy(min_rounds=5, max_rounds=10**9, target_ms=1.0)
    assert policy.rounds_for(0.0) == 1000
    assert policy.rounds_for(1e-9) == 1000
    assert policy.rounds_for(0.5) == 5  # ceil(2) = 2, then MIN


def test_round_policy_parses_its_four_fields():
    assert RoundPolicy.parse("2,5,60,2000") == RoundPolicy()
    assert RoundPolicy.parse("1,6,7,10.5") == RoundPolicy(1, 6, 7, 10.5)


@pytest.mark.parametrize("raw", ["2,5,60", "2,5,60,2000,1", "a,5,60,2000", "2.5,5,60,2000", "", "2;5;60;2000"])
def test_round_policy_parse_names_the_format(raw):
    with pytest.raises(InputError) as err:
        RoundPolicy.parse(raw)
    assert err.value.field == "rounds" and "WARMUP,MIN,MAX,TARGET_MS" in err.value.rule and err.value.value == raw


@pytest.mark.parametrize("raw", ["2,5,60,nan", "2,5,60,inf", "0,5,60,2000", "2,4,60,2000"])
def test_round_policy_parse_applies_the_rules(raw):
    with pytest.raises(InputError) as err:
        RoundPolicy.parse(raw)
    assert err.value.field == "rounds" and "WARMUP,MIN,MAX,TARGET_MS" not in err.value.rule


# --- RunControls ---------------------------------------------------------------------------------

@pytest.mark.parametrize("option, fraction", [
    ("inject_slowdown", 0.0), ("inject_slowdown", -0.1), ("inject_slowdown", 10.01), ("inject_slowdown", math.nan),
    ("inject_gpu_work", 0.0), ("inject_gpu_work", 11.0), ("inject_gpu_work", math.inf)])
def test_run_controls_refuse_fractions_outside_0_10(option, fraction):
    field = {"inject_slowdown": "slowdowns", "inject_gpu_work": "gpu_work"}[option]
    with pytest.raises(InputError) as err:
        RunControls(**{field: {"e2e[*]": fraction}})
    assert err.value.field == option and "0 < FRACTION <= 10" in err.value.rule
    assert err.value.value == f"e2e[*]={fraction}"


def test_run_controls_accept_the_edges():
    controls = RunControls(slowdowns={"a": 10.0, "b": 1e-9}, gpu_work={"c": 10.0})
    assert controls.slowdown_for("a") == 10.0 and controls.gpu_work_for("c") == 10.0


@pytest.mark.parametrize("option, field", [("inject_sync", "syncs"), ("inject_kernel", "kernels")])
def test_run_controls_refuse_an_empty_pattern(option, field):
    RunControls(**{field: ("x",)})
    with pytest.raises(InputError) as err:
        RunControls(**{field: ("x", "")})
    assert err.value.field == option and "case name or pattern" in err.value.rule


def test_run_controls_round_trip_through_the_environment():
    controls = RunControls(rounds=RoundPolicy(1, 5, 6, 10.0), slowdowns={"e2e[*]": 0.5}, gpu_work={"x": 0.25},
                           syncs=("latent_prep[*]",), kernels=("k",), reverted=("single_frame", "first_frame_2d"), parent_pid=123)
    assert RunControls.from_env({CONTROLS_ENV: controls.to_env()}) == controls
    assert RunControls.from_env({}) == RunControls()
    assert RunControls.from_env({CONTROLS_ENV: ""}) == RunControls()


def test_run_controls_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv(CONTROLS_ENV, RunControls(syncs=("a",)).to_env())
    assert RunControls.from_env().syncs == ("a",)


def test_run_controls_from_env_refuses_an_unknown_field():
    with pytest.raises(Exception, match="bogus"):
        RunControls.from_env({CONTROLS_ENV: '{"bogus": 1}'})


def test_the_largest_matching_fraction_applies():
    controls = RunControls(slowdowns={"e2e[*]": 0.2, "e2e[1280x720*]": 0.5, "latent_prep[*]": 3.0},
                           gpu_work={"e2e[*]": 0.1, "*": 0.05})
    assert controls.slowdown_for("e2e[1280x720x81,single_frame]") == 0.5
    assert controls.slowdown_for("e2e[832x480x81,single_frame]") == 0.2
    assert controls.slowdown_for("denoise[x]") == 0.0
    assert controls.gpu_work_for("e2e[a]") == 0.1
    assert controls.gpu_work_for("denoise[a]") == 0.05
    assert RunControls().slowdown_for("e2e[a]") == 0.0 and RunControls().gpu_work_for("e2e[a]") == 0.0


def test_sync_and_kernel_controls_match_patterns():
    controls = RunControls(syncs=("e2e[*]", "denoise[a]"), kernels=("latent_prep[*]",))
    assert controls.sync_for("e2e[b]") and controls.sync_for("denoise[a]") and not controls.sync_for("denoise[b]")
    assert controls.kernel_for("latent_prep[1x1]") and not controls.kernel_for("e2e[b]")
    assert not RunControls().sync_for("e2e[b]") and not RunControls().kernel_for("e2e[b]")


def test_active_lists_every_control_in_words():
    controls = RunControls(slowdowns={"a": 0.5}, gpu_work={"b": 0.25}, syncs=("c",), kernels=("d",),
                           reverted=("single_frame", "first_frame_2d"))
    assert controls.active == ("slowdown a=0.5", "gpu work b=0.25", "extra sync c", "extra kernel d",
                               "single_frame reverted to expand (diffusers' pipeline: to shipped)", "first_frame_2d reverted to single_frame")
    assert RunControls().active == ()
    assert RunControls(rounds=RoundPolicy(), parent_pid=1).active == ()


@pytest.mark.parametrize("controls, label, strategy", [
    (RunControls(), "single_frame", "single_frame"),
    (RunControls(), "first_frame_2d", "first_frame_2d"),
    (RunControls(), "expand", "expand"),
    (RunControls(), None, None),
    (RunControls(reverted=("single_frame",)), "single_frame", "expand"),
    (RunControls(reverted=("single_frame",)), "first_frame_2d", "first_frame_2d"),
    (RunControls(reverted=("single_frame",)), "expand", "expand"),
    (RunControls(reverted=("first_frame_2d",)), "first_frame_2d", "single_frame"),
    (RunControls(reverted=("first_frame_2d",)), "single_frame", "single_frame"),
    (RunControls(reverted=("first_frame_2d",)), None, None),
])
def test_strategy_for_reverts_only_its_own_label(controls, label, strategy):
    assert controls.strategy_for(label) == strategy
    # In diffusers' pipeline the single-frame encode replaced prepare_latents as shipped: a revert runs that.
    shipped = "shipped" if strategy == "expand" and label == "single_frame" else strategy
    assert controls.strategy_for(label, replaced="shipped") == shipped


# --- inject --------------------------------------------------------------------------------------

def _ops(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


def test_inject_without_a_matching_control_returns_the_function_itself():
    def fn():
        return 1

    controls = RunControls(syncs=("other[*]",), kernels=("other[*]",), gpu_work={"other[*]": 1.0},
                           slowdowns={"case[a]": 1.0})  # a slowdown is measure's, not inject's
    assert inject(fn, "case[a]", CPU, controls, 10.0) == (fn, ())


def test_injected_kernel_adds_one_op_and_keeps_the_result():
    x = torch.ones(4)
    injected, labels = inject(lambda: x + 1, "case[a]", CPU, RunControls(kernels=("case[*]",)), 1.0)
    assert labels == ("extra kernel",)
    assert torch.equal(injected(), x + 1)
    ops = _ops(injected)
    assert ops.count("aten::neg_") == 1 and "aten::_local_scalar_dense" not in ops


def test_injected_sync_adds_one_scalar_read():
    x = torch.ones(4)
    injected, labels = inject(lambda: x * 2, "case[a]", CPU, RunControls(syncs=("case[a]",)), 1.0)
    assert labels == ("extra sync",)
    assert torch.equal(injected(), x * 2)
    ops = _ops(injected)
    assert ops.count("aten::_local_scalar_dense") == 1 and "aten::neg_" not in ops


def test_injected_gpu_work_on_cpu_spins_its_fraction_of_the_round():
    injected, labels = inject(lambda: "out", "case[a]", CPU, RunControls(gpu_work={"case[*]": 0.5}), 40.0)
    assert labels == ("gpu work 0.5 (20.000 ms)",)
    start = time.perf_counter()
    assert injected() == "out"
    assert time.perf_counter() - start >= 0.020


def test_all_injections_together_are_labelled_in_order():
    _, labels = inject(lambda: None, "c", CPU, RunControls(gpu_work={"c": 0.1}, syncs=("c",), kernels=("c",)), 1.0)
    assert labels == ("gpu work 0.1 (0.100 ms)", "extra sync", "extra kernel")


def test_busy_on_cpu_lasts_at_least_its_time():
    start = time.perf_counter()
    harness._busy(CPU, 15.0)
    elapsed = time.perf_counter() - start
    assert 0.015 <= elapsed < 5.0


# --- process set-up ------------------------------------------------------------------------------

def test_single_thread_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    harness.single_thread_on_cpu(torch.device("cuda"))
    assert calls == []
    harness.single_thread_on_cpu(CPU)
    assert calls == [harness.CPU_THREADS] == [1]


def _pdeathsig() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    sig = ctypes.c_int(-1)
    assert libc.prctl(2, ctypes.byref(sig)) == 0  # PR_GET_PDEATHSIG
    return sig.value


@pytest.fixture
def restore_pdeathsig():
    before = _pdeathsig()
    yield
    ctypes.CDLL(None).prctl(1, before)


def test_die_with_parent_asks_for_sigterm_on_the_parents_death(monkeypatch, restore_pdeathsig):
    kills = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    harness.die_with_parent(os.getppid())
    assert _pdeathsig() == signal.SIGTERM
    assert kills == []  # the parent lives


def test_die_with_parent_stops_at_once_when_the_parent_is_already_gone(monkeypatch, restore_pdeathsig):
    kills = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    harness.die_with_parent(os.getppid() + 10**6)  # not our parent: it died and we were re-parented
    assert kills == [(os.getpid(), signal.SIGTERM)]


# --- inputs --------------------------------------------------------------------------------------

def test_seeded_image_is_seeded_uniform_in_minus_one_to_one():
    a = harness.seeded_image(32, 16)
    assert a.shape == (1, 3, 16, 32) and a.device == CPU and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() < 1 and a.min() < -0.9 and a.max() > 0.9
    assert abs(float(a.mean())) < 0.1  # centred: * 2 - 1, not * 2 + 1
    assert torch.equal(a, harness.seeded_image(32, 16, seed=0))
    assert not torch.equal(a, harness.seeded_image(32, 16, seed=1))
    generator = torch.Generator("cpu").manual_seed(3)
    assert torch.equal(harness.seeded_image(8, 8, "cpu", seed=3), torch.rand(1, 3, 8, 8, generator=generator) * 2 - 1)


def test_smooth_image_is_a_seeded_smooth_photo_like_image():
    a = harness.smooth_image(64, 48)
    assert a.shape == (1, 3, 48, 64) and a.device == CPU
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, harness.smooth_image(64, 48, seed=0))
    assert not torch.equal(a, harness.smooth_image(64, 48, seed=1))
    step = (a[..., 1:] - a[..., :-1]).abs().max()
    assert step < 0.2  # smooth: neighbouring pixels are close, unlike seeded_image
    assert float(a.std()) > 0.05  # but not flat
    # The benchmarks' first-frame input is this image: pin it, so that a change is a decision.
    assert float(a.mean()) == pytest.approx(-0.018642, abs=1e-5)
    assert float(a.std()) == pytest.approx(0.250874, abs=1e-5)
    assert float(a[0, 1, 24, 32]) == pytest.approx(-0.493652, abs=1e-5)


# --- equivalence_for -----------------------------------------------------------------------------

def test_equivalence_for_single_frame_checks_against_expand():
    record = equivalence_for(tiny.vae(), tiny.i2v_request(), "single_frame", "single_frame", torch.float32)
    assert record.equivalent and record.bitwise and record.max_abs_err == 0 and record.max_rel_err == 0
    assert record.reference == "expand" and record.rule.startswith("bitwise, else normwise relative error <= ")


def test_equivalence_record_holds_the_worst_tensor():
    report = harness.check_encode_equivalence(tiny.look_ahead_vae(), tiny.i2v_request(), dtype=torch.float32)
    record = harness.equivalence_record(report)
    compared = (report.frame0, report.image_latent, report.latents)
    assert not record.equivalent and not record.bitwise
    assert record.max_abs_err == max(c.max_abs_err for c in compared) > 0
    assert record.max_rel_err == max(c.max_rel_err for c in compared) > min(c.max_rel_err for c in compared)
    assert f"{report.rtol:g}" in record.rule


def test_equivalence_for_first_frame_2d_checks_against_the_fp32_oracle():
    record = equivalence_for(tiny.vae(), tiny.i2v_request(), "first_frame_2d", "first_frame_2d", torch.float32)
    assert record.equivalent and record.reference == "fp32 oracle (single_frame)"
    assert "rms rel err" in record.rule


def test_equivalence_for_other_strategies_is_none():
    assert equivalence_for(tiny.vae(), tiny.i2v_request(), "expand", "expand", torch.float32) is None
    assert equivalence_for(tiny.vae(), tiny.i2v_request(), None, None, torch.float32) is None


# --- record_case and measure ---------------------------------------------------------------------

class _Benchmark:
    """Just what record_case touches of pytest-benchmark's fixture."""

    def __init__(self):
        self.group = None
        self.extra_info = {}


def test_record_case_keeps_encoded_fields_and_groups_by_benchmark():
    bench = _Benchmark()
    spec = CaseSpec("latent_prep", 96, 64, 9, "single_frame")
    record_case(bench, spec=spec, warmup_ms=(1.0, 2.0), injected=())
    assert bench.group == "latent_prep"
    assert bench.extra_info["warmup_ms"] == [1.0, 2.0] and bench.extra_info["injected"] == []
    assert bench.extra_info["spec"]["width"] == 96
    record_case(bench, peak_mem_gib=None)
    assert bench.extra_info["peak_mem_gib"] is None and bench.group == "latent_prep"


def test_record_case_refuses_a_name_case_results_lack():
    bench = _Benchmark()
    with pytest.raises(TypeError, match="samples_ms"):
        record_case(bench, warmup_ms=(1.0,), samples_ms=(1.0,))
    assert bench.extra_info == {}  # nothing half-kept


def _work():
    x = torch.ones(32, 32)
    return x @ x


def test_measure_times_its_rounds_and_records_the_case(benchmark, monkeypatch):
    monkeypatch.delenv(CONTROLS_ENV, raising=False)
    seen = []
    measure(benchmark, _work, device=CPU, case_name="case[a]", policy=RoundPolicy(3, 5, 6, 1e-3), on_round=seen.append)
    assert len(benchmark.stats.stats.data) == 5
    assert len(seen) == 5 and all(torch.equal(s, _work()) for s in seen)  # timed rounds only, not warm-up
    info = benchmark.extra_info
    assert len(info["warmup_ms"]) == 3 and all(ms > 0 for ms in info["warmup_ms"])
    assert info["peak_mem_gib"] is None and info["resident_mem_gib"] is None and info["injected"] == []
    counters = WorkCounters(**{**info["counters"], "top_kernels": (), "device_ms_samples": ()})
    assert counters.source == "cpu" and counters.profiled_rounds == harness.PROFILED_ROUNDS == 5
    assert counters.flops == 2 * 32**3 and counters.syncs == 0


def test_measure_without_profile_keeps_no_counters(benchmark, monkeypatch):
    monkeypatch.delenv(CONTROLS_ENV, raising=False)
    measure(benchmark, _work, device=CPU, case_name="case[a]", policy=RoundPolicy(1, 5, 5, 1e-3), profile=False)
    assert benchmark.extra_info["counters"] is None and len(benchmark.stats.stats.data) == 5


@pytest.mark.parametrize("round_ms", [0.001, 200.0, 5000.0])
def test_every_case_gets_the_same_profiled_rounds_whatever_its_round_time(benchmark, monkeypatch, round_ms):
    """Five profiled rounds for a 1 us round and a 5 s one alike: device time against a one-run baseline
    (5 against 5) can then reach p < 0.01, which 3 against 3 never can (the long-round policy that was)."""
    monkeypatch.delenv(CONTROLS_ENV, raising=False)

    class FixedTimer:
        def __init__(self, device):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.elapsed_ms = round_ms

    monkeypatch.setattr(harness, "DeviceTimer", FixedTimer)
    measure(benchmark, _work, device=CPU, case_name="case[a]", policy=RoundPolicy(1, 5, 5, 1e-3))
    assert benchmark.extra_info["warmup_ms"] == [round_ms]
    assert benchmark.extra_info["counters"]["profiled_rounds"] == harness.PROFILED_ROUNDS == 5


def test_cpu_busy_spins_until_its_time_is_up(monkeypatch):
    """On the CPU, _busy(ms) reads the clock until `ms` have passed: not one reading more or fewer."""
    readings = iter([0.0, 0.1249, 0.125, 0.2, 0.3])
    seen = []

    def clock():
        seen.append(next(readings))
        return seen[-1]

    monkeypatch.setattr(harness.time, "perf_counter", clock)
    harness._busy(CPU, 125.0)
    assert seen == [0.0, 0.1249, 0.125]


def test_measure_obeys_the_controls_of_its_parent(benchmark, monkeypatch):
    """The parent's round policy overrides the case's; the slowdown and the extra sync land in the
    rounds, are counted and are recorded."""
    controls = RunControls(rounds=RoundPolicy(1, 6, 6, 1e-3), slowdowns={"case[*]": 1.0}, syncs=("case[a]",))
    monkeypatch.setenv(CONTROLS_ENV, controls.to_env())
    measure(benchmark, _work, device=CPU, case_name="case[a]", policy=RoundPolicy(1, 5, 5, 1e-3))
    assert len(benchmark.stats.stats.data) == 6
    assert benchmark.extra_info["injected"] == ["slowdown 1", "extra sync"]
    assert benchmark.extra_info["counters"]["syncs"] == 1


def test_measure_slowdown_sleeps_its_fraction_of_each_round(benchmark, monkeypatch):
    def slow():
        time.sleep(0.01)

    monkeypatch.setenv(CONTROLS_ENV, RunControls(slowdowns={"case[a]": 2.0}).to_env())
    measure(benchmark, slow, device=CPU, case_name="case[a]", policy=RoundPolicy(1, 5, 5, 1e-3), profile=False)
    assert min(benchmark.stats.stats.data) >= 0.030  # 10 ms of work, then twice that asleep


# --- what the tests above leave open, pinned one by one ---------------------------------------------

def test_round_policy_errors_show_the_policy():
    with pytest.raises(InputError) as err:
        RoundPolicy(warmup_rounds=0)
    assert str(err.value) == ("rounds: needs WARMUP >= 1 (the first round pays for compilation and caches) "
                              "(got RoundPolicy(warmup_rounds=0, min_rounds=5, max_rounds=60, target_ms=2000.0))")
    with pytest.raises(InputError) as err:
        RoundPolicy(min_rounds=4)
    assert str(err.value).endswith("(got RoundPolicy(warmup_rounds=2, min_rounds=4, max_rounds=60, target_ms=2000.0))")
    with pytest.raises(InputError) as err:
        RoundPolicy(target_ms=0.0)
    assert str(err.value) == ("rounds: needs a finite TARGET_MS > 0 "
                              "(got RoundPolicy(warmup_rounds=2, min_rounds=5, max_rounds=60, target_ms=0.0))")


def test_run_controls_empty_pattern_message():
    with pytest.raises(InputError) as err:
        RunControls(kernels=("",))
    assert str(err.value) == "inject_kernel: must be a case name or pattern, e.g. 'latent_prep[*]' (got '')"


@pytest.fixture
def busy_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(harness, "_busy", lambda device, ms: calls.append((device, ms)))
    return calls


def test_only_gpu_work_keeps_the_device_busy(busy_calls):
    for controls in (RunControls(kernels=("c",)), RunControls(syncs=("c",))):
        injected, _ = inject(lambda: None, "c", CPU, controls, 10.0)
        injected()
    assert busy_calls == []
    injected, _ = inject(lambda: None, "c", CPU, RunControls(gpu_work={"c": 0.25}), 10.0)
    injected()
    assert busy_calls == [(CPU, 2.5)]


def test_inputs_land_on_the_device_asked_for():
    assert harness.seeded_image(4, 4, "meta").device.type == "meta"
    assert harness.smooth_image(4, 4, "meta").device.type == "meta"


def test_smooth_image_is_clamped_to_minus_one_to_one():
    a = harness.smooth_image(64, 48, seed=5)  # a seed whose blobs overshoot
    assert float(a.max()) == 1.0 and int((a == 1.0).sum()) == 136 and float(a.min()) > -1
    b = harness.smooth_image(64, 48, seed=15)  # ... and one whose blobs undershoot
    assert float(b.min()) == -1.0 and int((b == -1.0).sum()) == 78 and float(b.max()) < 1


def test_equivalence_for_checks_in_the_cases_dtype(monkeypatch):
    dtypes = []
    real = harness.check_encode_equivalence

    def spy(vae, req, *, dtype):
        dtypes.append(dtype)
        return real(vae, req, dtype=dtype)

    monkeypatch.setattr(harness, "check_encode_equivalence", spy)
    equivalence_for(tiny.vae(), tiny.i2v_request(), "single_frame", "single_frame", torch.bfloat16)
    assert dtypes == [torch.bfloat16]
    record = equivalence_for(tiny.vae(), tiny.i2v_request(), "first_frame_2d", "first_frame_2d", torch.bfloat16)
    assert record.equivalent and not record.bitwise and " in bfloat16: " in record.rule


def test_measure_sizes_gpu_work_from_the_warm_up(benchmark, monkeypatch, busy_calls):
    monkeypatch.setenv(CONTROLS_ENV, RunControls(gpu_work={"case[a]": 0.5}).to_env())
    measure(benchmark, _work, device=CPU, case_name="case[a]", policy=RoundPolicy(2, 5, 5, 1e-3), profile=False)
    (label,) = benchmark.extra_info["injected"]
    busy_ms = 0.5 * min(benchmark.extra_info["warmup_ms"])
    assert label == f"gpu work 0.5 ({busy_ms:.3f} ms)"
    assert busy_calls and all(call == (CPU, busy_ms) for call in busy_calls)


def test_measure_synchronises_before_and_after_each_timed_round(benchmark, monkeypatch):
    monkeypatch.delenv(CONTROLS_ENV, raising=False)
    calls = []
    monkeypatch.setattr(harness, "synchronize", calls.append)
    measure(benchmark, _work, device=CPU, case_name="case[a]", policy=RoundPolicy(1, 5, 5, 1e-3), profile=False)
    assert calls == [CPU] * 10  # setup (nothing queued) and target (all done), for each of 5 rounds


def test_the_gpu_state_is_read_just_before_and_just_after_the_timed_rounds(benchmark, monkeypatch):
    """NVML readings (bench.core.telemetry) bracket the timed rounds and are recorded with the case; none is taken
    inside a round, where it would be timed."""
    from bench.core.telemetry import GpuReading

    monkeypatch.delenv(CONTROLS_ENV, raising=False)
    journal = []
    readings = iter([GpuReading("recorded", 0, 1980, 2619, 41, 120.5, 0, 0, 0),
                     GpuReading("recorded", 0, 1755, 2619, 63, 690.0, 100, 40, 0x4)])

    def read_device(device):
        journal.append("read")
        return next(readings)

    def work():
        journal.append("round")
        return _work()

    monkeypatch.setattr(harness.telemetry, "read_device", read_device)
    measure(benchmark, work, device=CPU, case_name="case[a]", policy=RoundPolicy(1, 5, 5, 1e-3), profile=False)
    assert journal == ["round", "read"] + ["round"] * 5 + ["read"]  # warm-up, reading, timed rounds, reading
    info = benchmark.extra_info
    assert (info["gpu_before"]["sm_clock_mhz"], info["gpu_after"]["sm_clock_mhz"]) == (1980, 1755)
