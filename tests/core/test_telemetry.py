"""bench.core.telemetry on recorded NVML readings (tests/golden/nvml_readings.json, source "recorded"), and the
compare judge's note on a regression the GPU's clocks or throttling may explain."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bench.compare.judge import judge
from bench.compare.report import render_summary
from bench.core import telemetry
from bench.core.records import CaseResult, decode_record, encode_record
from bench.gate import rules as gate
from bench.gate import stats
from cosmos3.errors import InputError
from tests.compare.helpers import paired, record
from tests.repo import GOLDEN

VALUES = json.loads((GOLDEN / "nvml_readings.json").read_text())


def reading(name: str) -> telemetry.GpuReading:
    return telemetry.from_nvml_values(VALUES[name])


def test_a_recorded_reading_has_units_and_says_it_was_recorded():
    r = reading("h200_busy")
    assert r == telemetry.GpuReading("recorded", 0, 1980, 3201, 48, 412.345, 97, 41, 0)
    assert r.reasons == () and r.throttled == ()


def test_reasons_are_decoded_and_only_slowdowns_count_as_throttling():
    assert reading("h200_idle").reasons == ("gpu_idle",) and reading("h200_idle").throttled == ()
    assert reading("h200_power_capped").throttled == ("sw_power_cap",)
    assert reading("h200_thermal").throttled == ("sw_thermal_slowdown", "hw_thermal_slowdown")


def test_values_not_shaped_like_nvml_and_unknown_sources_are_refused():
    with pytest.raises(InputError, match="NVML's fields"):
        telemetry.from_nvml_values({"clock_sm": 1})
    with pytest.raises(InputError, match="source"):
        telemetry.from_nvml_values(VALUES["h200_busy"], source="made up")


def test_without_nvml_there_is_no_reading():
    """This machine has no NVIDIA driver: None, never an exception (nor a made-up reading)."""
    assert telemetry.read_gpu(0) is None
    assert telemetry.read_device(torch.device("cpu")) is None
    assert telemetry.read_device(torch.device("cuda", 0)) is None


def test_a_cuda_device_is_read_by_its_driver_index(monkeypatch):
    seen = []
    monkeypatch.setattr(telemetry, "read_gpu", lambda index: seen.append(index))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    telemetry.read_device(torch.device("cuda", 1))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    telemetry.read_device(torch.device("cuda"))
    assert seen == [1, 0]


def test_the_reasons_table_matches_pynvml():
    pynvml = pytest.importorskip("pynvml")
    for name, bit in telemetry.REASON_BITS.items():
        camel = "".join(w.capitalize() for w in name.split("_"))  # sw_power_cap -> SwPowerCap
        assert getattr(pynvml, f"nvmlClocksEventReason{camel}") == bit, name


def test_sm_clock_note():
    busy, capped, thermal = reading("h200_busy"), reading("h200_power_capped"), reading("h200_thermal")
    assert telemetry.sm_clock_note([busy, busy], [busy]) is None
    assert telemetry.sm_clock_note([], []) is None
    note = telemetry.sm_clock_note([thermal], [busy])
    assert note.startswith("SM clocks differ by 28.8% (head 1410 MHz, base 1980 MHz) > 5%")
    assert "the head was throttled (hw_thermal_slowdown, sw_thermal_slowdown)" in note
    assert telemetry.sm_clock_note([busy], [capped]) == ("SM clocks differ by 11.4% (head 1980 MHz, base 1755 MHz) "
                                                         "> 5%; the base was throttled (sw_power_cap)")


def test_a_case_result_keeps_its_readings_through_the_record():
    result = CaseResult(paired().head.spec, (1.0, 2.0), gpu_before=reading("h200_idle"),
                        gpu_after=reading("h200_busy"))
    assert decode_record(CaseResult, json.loads(json.dumps(encode_record(result))), "case") == result
    assert decode_record(CaseResult, encode_record(CaseResult(result.spec, (1.0,))), "case").gpu_before is None


def with_gpu(pair, head, base):
    return dataclasses.replace(pair, head_gpu=tuple(head), base_gpu=tuple(base))


def test_a_regression_on_a_throttled_side_says_so_and_still_fails(make_env):
    slow = with_gpu(paired(ratio=1.10, seed=4), [reading("h200_thermal")] * 2, [reading("h200_busy")] * 2)
    report = judge(record([slow], make_env=make_env))
    (c,) = report.comparisons
    assert c.verdict == stats.REGRESSION and report.exit_code == 1
    assert "but the GPU may explain it: SM clocks differ by 28.8%" in c.note
    assert "the head was throttled" in report.failures[0]
    summary = render_summary(report)
    assert "## GPU" in summary and "1410-1410" in summary and "hw_thermal_slowdown" in summary


def test_steady_clocks_add_no_note_and_noise_gets_none_either(make_env):
    busy = [reading("h200_busy")] * 2
    slow = with_gpu(paired(ratio=1.10, seed=4), busy, busy)
    (c,) = judge(record([slow], make_env=make_env)).comparisons
    assert c.verdict == stats.REGRESSION and c.gpu_note is None and "GPU" not in c.note
    same = with_gpu(paired(ratio=1.0, seed=5), [reading("h200_thermal")], busy)
    (c,) = judge(record([same], make_env=make_env)).comparisons
    assert c.verdict == stats.OK and c.gpu_note and c.note == ""  # the note speaks only to a regression's verdict
    assert np.isfinite(c.ratio)


# ---- the stored-baseline gate and `bench run`'s report ------------------------------------------------


def test_a_stored_baseline_regression_on_a_throttled_run_says_so_and_still_fails(make_case, make_run):
    from bench.gate.report import render_summary as render_run
    from bench.gate.rules import evaluate

    baseline = make_run([dataclasses.replace(make_case(), gpu_before=reading("h200_busy"),
                                                 gpu_after=reading("h200_busy"))])
    hot = dataclasses.replace(make_case(seed=1, median_ms=11.0), gpu_before=reading("h200_busy"),
                                  gpu_after=reading("h200_thermal"))
    report = evaluate(make_run([hot]), baseline, gate.GateConfig())
    (c,) = report.comparisons
    assert c.verdict == stats.REGRESSION and report.exit_code == 1
    assert c.gpu_note == ("SM clocks differ by 14.4% (run 1695 MHz, baseline 1980 MHz) > 5%; "
                          "the run was throttled (hw_thermal_slowdown, sw_thermal_slowdown)")
    assert report.failures[0].endswith(f"but the GPU may explain it: {c.gpu_note}")
    summary = render_run(make_run([hot]), report)
    assert "## GPU state" in summary
    assert "| 1410-1980 | 87 | hw_thermal_slowdown, sw_thermal_slowdown | SM clocks differ by 14.4%" in summary


def test_steady_clocks_leave_a_stored_baseline_regression_unannotated_and_no_nvml_no_section(make_case, make_run):
    from bench.gate.report import render_summary as render_run
    from bench.gate.rules import evaluate

    busy = {"gpu_before": reading("h200_busy"), "gpu_after": reading("h200_busy")}
    baseline = make_run([dataclasses.replace(make_case(), **busy)])
    slow = make_run([dataclasses.replace(make_case(seed=1, median_ms=11.0), **busy)])
    report = evaluate(slow, baseline, gate.GateConfig())
    (c,) = report.comparisons
    assert c.verdict == stats.REGRESSION and c.gpu_note is None and "GPU" not in report.failures[0]
    assert "## GPU state" in render_run(slow, report)
    cpu = make_run([make_case(seed=1, median_ms=11.0)])
    assert "## GPU state" not in render_run(cpu, evaluate(cpu, make_run([make_case()]), gate.GateConfig()))
