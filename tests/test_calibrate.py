"""Gate calibration: false alarms over unchanged runs and detection rates over injected work."""

from __future__ import annotations

import pytest

from bench import calibrate
from bench.cli import main
from bench.gate import GateConfig
from bench.records import KernelStat, WorkCounters
from cosmos3.errors import InputError

NAME = "latent_prep[single_frame-1280x720-81f]"


def run_with(make_case, make_run, *, device_ms: float, seed: int, wall_ms: float = 10.0, launches: int = 500):
    counters = WorkCounters(
        source="cuda", profiled_rounds=5, kernel_launches=launches, h2d_copies=0, h2d_bytes=0, d2h_copies=0,
        d2h_bytes=0, syncs=0, flops=1000, device_ms_samples=tuple(device_ms * (1 + 0.001 * i) for i in range(5)),
        top_kernels=(KernelStat("k", launches, device_ms),))
    return make_run([make_case(median_ms=wall_ms, seed=seed, counters=counters)])


def test_counts_false_alarms_and_detections(make_case, make_run):
    baseline = [run_with(make_case, make_run, device_ms=10.0, seed=s) for s in range(3)]
    aa = [run_with(make_case, make_run, device_ms=10.0, seed=10 + s) for s in range(4)]
    injected = {
        0.01: [run_with(make_case, make_run, device_ms=10.1, seed=20 + s) for s in range(4)],
        0.10: [run_with(make_case, make_run, device_ms=11.0, seed=30 + s, wall_ms=11.0, launches=501)
               for s in range(4)],
    }
    cal = calibrate.analyse(baseline, aa, injected, GateConfig())
    rows = {row.metric: row for row in cal.rows}
    assert set(rows) == {"latency", "device_time", "counters"}
    assert all(row.false_alarms == 0 and row.aa_runs == 4 for row in rows.values())
    device = rows["device_time"]
    assert [(d.size, d.detected, d.runs) for d in device.detections] == [(0.01, 0, 4), (0.10, 4, 4)]
    assert device.smallest_reliable == 0.10
    assert rows["counters"].smallest_reliable == 0.10  # 501 launches: the injected kernel itself
    assert [(d.case, d.runs, d.varying_counters) for d in cal.determinism] == [(NAME, 7, ())]
    text = calibrate.render(cal)
    assert f"| `{NAME}` | device_time | 0 | 0/4 | 4/4 | +10% |" in text


def test_a_false_alarm_is_counted(make_case, make_run):
    baseline = [run_with(make_case, make_run, device_ms=10.0, seed=s) for s in range(3)]
    aa = [run_with(make_case, make_run, device_ms=10.0, seed=10), run_with(make_case, make_run, device_ms=12.0, seed=11)]
    cal = calibrate.analyse(baseline, aa, {}, GateConfig())
    assert {row.metric: row.false_alarms for row in cal.rows}["device_time"] == 1


def test_needs_runs():
    with pytest.raises(InputError, match="baseline_runs"):
        calibrate.analyse([], [], {})


@pytest.mark.parametrize("raw", ["", "0", "0.02,x", "11", "nan"])
def test_sizes_are_fractions(raw):
    with pytest.raises(InputError, match="sizes"):
        calibrate.parse_sizes(raw)


def test_steps_are_read_back_from_folder_names(make_case, make_run):
    run = make_run([make_case()])
    baseline, aa, injected = calibrate.group_runs(
        [("baseline-1", run), ("aa-1", run), ("aa-2", run), ("gpu0.03-1", run), ("gpu0.1-1", run)])
    assert len(baseline) == 1 and len(aa) == 2 and sorted(injected) == [0.03, 0.1]


@pytest.mark.slow
def test_the_command_produces_its_table_on_the_tiny_preset(tmp_path, capsys):
    folder = tmp_path / "cal"
    common = ["calibrate", "--preset", "tiny", "--rounds", "1,5,5,1", "--case", "vae_encode[64x48-1f]",
              "--calibration-dir", str(folder), "--baseline-runs", "2", "--aa-runs", "1", "--runs-per-size", "1",
              "--sizes", "8", "--threshold", "3.0"]
    # Steps in separate calls add up, as they would in separate 10-minute GPU calls.
    assert main([*common, "--step", "baseline", "--step", "aa"]) == 0
    assert main([*common, "--step", "gpu", "--step", "report"]) == 0
    out = capsys.readouterr().out
    assert "# cosmos3-bench: gate calibration" in out
    assert "| `vae_encode[64x48-1f]` | latency | 0 | 1/1 |" in out  # +800% host work is caught on the CPU
    (report,) = folder.glob("report-*/calibration.md")
    assert (report.parent / "calibration.json").is_file()
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["aa-1", "baseline-1", "baseline-2", "gpu8-1"]
