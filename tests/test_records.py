"""Run records: one serializer, atomic writes that never overwrite silently, forward-compatible loading."""

from __future__ import annotations

import json
import os

import pytest

from bench.records import (
    SCHEMA_VERSION,
    CaseSpec,
    load_run,
    merge_runs,
    run_from_pytest_benchmark,
    run_to_dict,
    save_run,
    write_json_atomic,
)
from cosmos3.errors import InputError
from tests.conftest import equivalence


def test_case_names_read_like_the_issue():
    assert CaseSpec("latent_prep", 1280, 720, 81, "single_frame").name == "latent_prep[single_frame-1280x720-81f]"
    assert CaseSpec("vae_encode", 832, 480, 1).name == "vae_encode[832x480-1f]"


def test_round_trip(tmp_path, make_case, make_run):
    run = make_run([make_case(peak_mem_gib=1.5, stage_samples_ms={"denoising": (1.0, 2.0)}, equivalence=equivalence(),
                              warmup_ms=(3.0, 2.0), injected=("slowdown 0.1",), num_inference_steps=6)])
    save_run(run, tmp_path / "run.json")
    again = load_run(tmp_path / "run.json")
    assert again == run
    assert again.cases[0].median_ms == run.cases[0].median_ms


def test_stats_in_the_file_are_for_readers_only(tmp_path, make_case, make_run):
    save_run(make_run([make_case()]), tmp_path / "run.json")
    data = json.loads((tmp_path / "run.json").read_text())
    data["cases"][0]["stats"]["median_ms"] = -1  # the loader derives statistics from the samples
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert load_run(tmp_path / "run.json").cases[0].median_ms > 0


def test_never_overwrites_silently(tmp_path, make_case, make_run):
    path = tmp_path / "b.json"
    save_run(make_run([make_case(seed=1)]), path)
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"output: file exists; pass --force to replace it"):
        save_run(make_run([make_case(seed=2)]), path)
    assert path.read_bytes() == before
    save_run(make_run([make_case(seed=2)]), path, overwrite=True)
    assert path.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "b.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")}, overwrite=True)  # not valid JSON: refused mid-way
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["b.json"]


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "c.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_older_files_load_with_defaults(tmp_path, make_case, make_run):
    data = run_to_dict(make_run([make_case()]))
    del data["environment"]["negative_controls"], data["cases"][0]["resident_mem_gib"], data["cases"][0]["warmup_ms"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    run = load_run(tmp_path / "old.json")
    assert run.environment.negative_controls == () and run.cases[0].resident_mem_gib is None


def test_newer_schema_is_refused(tmp_path, make_case, make_run):
    data = run_to_dict(make_run([make_case()]))
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "new.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"schema_version: must be one of \[1, 2\]"):
        load_run(tmp_path / "new.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"baseline: must be readable JSON"),
        ('{"schema_version": 1, "environment": {}, "cases": []}', r"environment.device_kind: is required"),
        ('{"schema_version": 1}', r"is not a valid run record"),
        ("[]", r"must be a JSON object"),
    ],
)
def test_corrupt_files(tmp_path, content, message):
    (tmp_path / "b.json").write_text(content)
    with pytest.raises(InputError, match=message):
        load_run(tmp_path / "b.json", what="baseline")


def test_absent_file(tmp_path):
    with pytest.raises(InputError, match=r"baseline: file does not exist"):
        load_run(tmp_path / "nope.json", what="baseline")


def test_from_pytest_benchmark_keeps_raw_samples_in_ms(make_case, make_run):
    env = run_to_dict(make_run([make_case()]))["environment"]
    data = {
        "machine_info": {"cosmos3_environment": env},
        "benchmarks": [
            {
                "stats": {"data": [0.010, 0.012, 0.011]},
                "extra_info": {
                    "spec": {"benchmark": "vae_encode", "width": 96, "height": 64, "num_frames": 1, "strategy": None},
                    "peak_mem_gib": 2.0,
                    "warmup_ms": [30.0],
                },
            }
        ],
    }
    run = run_from_pytest_benchmark(data)
    case = run.cases[0]
    assert case.name == "vae_encode[96x64-1f]"
    assert case.samples_ms == pytest.approx((10.0, 12.0, 11.0))
    assert case.median_ms == pytest.approx(11.0)
    assert case.peak_mem_gib == 2.0 and case.warmup_ms == (30.0,)


def test_from_pytest_benchmark_without_our_environment():
    with pytest.raises(InputError, match="lacks what the cosmos3 benchmarks write"):
        run_from_pytest_benchmark({"machine_info": {}, "benchmarks": []})


def test_merge_pools_samples_and_keeps_each_runs_median(tmp_path, make_case, make_run):
    runs = [make_run([make_case(median_ms=m, seed=i, peak_mem_gib=g, rounds=10)])
            for i, (m, g) in enumerate([(10.0, 2.0), (11.0, 2.1), (12.0, 2.0)])]
    merged = merge_runs(runs)
    (case,) = merged.cases
    assert case.rounds == 30 and case.peak_mem_gib == 2.1
    assert case.run_medians_ms == tuple(r.cases[0].median_ms for r in runs)
    assert len(merged.environment.merged_runs) == 3
    save_run(merged, tmp_path / "m.json")
    assert load_run(tmp_path / "m.json") == merged  # run medians and sources survive the file
    again = merge_runs([merged, runs[0]])  # merging a merged record extends, never collapses, its runs
    assert len(again.cases[0].run_medians_ms) == 4 and len(again.environment.merged_runs) == 4


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"preset": "tiny"}, "runs.preset: must be the same in every merged run"),
        ({"device": "NVIDIA H200"}, "runs.device_slug: must be the same in every merged run"),
        ({"negative_controls": ("slowdown x=0.1",)}, "runs.negative_controls: must be empty"),
    ],
)
def test_merge_refuses_unlike_runs(make_case, make_run, other, message):
    with pytest.raises(InputError, match=message):
        merge_runs([make_run([make_case()]), make_run([make_case()], **other)])


def test_merge_needs_two_runs(make_case, make_run):
    with pytest.raises(InputError, match="runs: merging needs at least two runs"):
        merge_runs([make_run([make_case()])])
