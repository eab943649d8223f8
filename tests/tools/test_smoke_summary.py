"""tools/smoke_summary.py: one PASS/FAIL line per smoke check, from the records a run left (synthetic here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from tests.repo import REPO

spec = importlib.util.spec_from_file_location("smoke_summary", REPO / "tools" / "smoke_summary.py")
summary = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = summary
spec.loader.exec_module(summary)


def speed_json(path: Path, ms_3d: float, ms_2d: float, equivalent: bool = True, errors: bool = True) -> Path:
    variants = [{"name": "single_frame (3D)", "samples_ms": [ms_3d] * 3},
                {"name": "first_frame_2d eager", "samples_ms": [ms_2d] * 3},
                {"name": "first_frame_2d cuda_graph", "samples_ms": [ms_2d / 2] * 3}]
    rows = [{"path": "first_frame_2d eager", "equivalent": equivalent}]
    path.write_text(json.dumps({"results": [{"width": 1280, "height": 720, "variants": variants,
                                             "errors": rows if errors else None}]}))
    return path


def test_first_frame_passes_at_the_gates_factor_with_equivalent_errors(tmp_path):
    line = summary.first_frame_line(0, 41, speed_json(tmp_path / "s.json", 22.0, 11.0))
    assert line.startswith("PASS first-frame: 1280x720 first_frame_2d 2.00x single_frame (11.00 vs 22.00 ms; "
                           "fastest first_frame_2d cuda_graph 4.00x); bf16 vs fp32 oracle: all equivalent; 41 s")


def test_first_frame_fails_below_the_factor_when_cut_or_on_a_missing_record(tmp_path):
    slow = summary.first_frame_line(0, 41, speed_json(tmp_path / "s.json", 22.0, 20.0))
    assert slow.startswith("FAIL first-frame: below the 1.5x the gate asks: 1280x720 first_frame_2d 1.10x")
    cut = summary.first_frame_line(124, 75, speed_json(tmp_path / "s.json", 22.0, 11.0, errors=False))
    assert cut.startswith("FAIL first-frame: cut at its time limit (timeout): ") and "not checked" in cut
    assert summary.first_frame_line(1, 9, tmp_path / "none.json") == (
        "FAIL first-frame: exit 1 after 9 s, no none.json: it crashed or was cut")


def test_bench_and_compare_without_a_record_fail(tmp_path, capsys):
    assert summary.bench_line(1, 12, tmp_path) == "FAIL bench: exit 1 after 12 s, no run.json: it crashed or was cut"
    assert summary.compare_line(137, 100, tmp_path).startswith("FAIL compare: killed at its time limit after 100 s")
    (tmp_path / "run.json").write_text("not json")
    assert summary.main(["bench", "--rc", "0", "--wall-s", "1", "--run", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("FAIL bench: exit 0; its record could not be read: ")


def test_bench_reads_the_suite_time_and_the_first_frame_ratio_from_a_run(tmp_path):
    (tmp_path / "run.json").write_text((REPO / "results" / "example" / "run.json").read_text())  # an H100 run
    line = summary.bench_line(0, 252, tmp_path)
    assert line.startswith("PASS bench: ") and " benchmarks, suite 239 s, step 252 s on NVIDIA H100" in line


def test_bench_reports_the_first_frame_factor_at_both_sizes(make_case, make_run, tmp_path):
    from bench.core.records import save_run

    cases = [make_case("latent_prep", strategy, width=w, height=h, median_ms=ms, seed=i)
             for i, (w, h, strategy, ms) in enumerate([(1280, 720, "single_frame", 20.7), (1280, 720, "first_frame_2d", 13.4),
                                                      (832, 480, "single_frame", 14.0), (832, 480, "first_frame_2d", 12.0)])]
    save_run(make_run(cases, suite_wall_s=250.0), tmp_path / "run.json")
    line = summary.bench_line(0, 260, tmp_path)
    assert "latent_prep 1280x720 81f single_frame / first_frame_2d 1.5" in line
    assert "latent_prep 832x480 81f single_frame / first_frame_2d 1.1" in line
