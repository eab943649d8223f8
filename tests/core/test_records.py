"""Run records: one serializer, atomic writes that never overwrite silently, forward-compatible loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.core.records import (
    SCHEMA_VERSION,
    CaseSpec,
    KernelStat,
    WorkCounters,
    case_to_dict,
    encode_record,
    load_run,
    merge_counters,
    merge_runs,
    run_from_dict,
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
    with pytest.raises(InputError) as err:
        save_run(make_run([make_case(seed=2)]), path)
    assert str(err.value) == f"output: file exists; pass --force to replace it (got {str(path)!r})"
    with pytest.raises(InputError, match="file exists"):
        write_json_atomic(path, {"a": 1})  # never overwrites unless asked
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


def test_json_files_are_indented_for_diffs_and_folders_are_made(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "b" / "c.json", {"a": [1, 2]})
    assert path == tmp_path / "a" / "b" / "c.json"
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ]\n}\n'


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
    with pytest.raises(InputError) as err:
        load_run(tmp_path / "nope.json", what="baseline")
    assert str(err.value) == f"baseline: file does not exist (got {str(tmp_path / 'nope.json')!r})"
    with pytest.raises(InputError) as err:
        load_run(tmp_path / "nope.json")
    assert str(err.value).startswith("run record: file does not exist")


def test_unreadable_json_names_the_file_and_the_parser_error(tmp_path):
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(InputError) as err:
        load_run(tmp_path / "b.json")
    assert str(err.value) == (f"run record: must be readable JSON (Expecting property name enclosed in double quotes: "
                              f"line 1 column 2 (char 1)) (got {str(tmp_path / 'b.json')!r})")


def test_a_record_names_its_source_by_default(make_case, make_run):
    data = run_to_dict(make_run([make_case()]))
    with pytest.raises(InputError, match=r"^run record\.cases\[.*\]\.samples_ms\[0\]: must be finite"):
        run_from_dict({**data, "cases": [{**data["cases"][0], "samples_ms": [0.0]}]})
    with pytest.raises(InputError, match=r"^pytest-benchmark JSON: lacks"):
        run_from_pytest_benchmark({})


def test_stats_for_readers(make_case):
    case = make_case(rounds=5)
    assert case_to_dict(case)["stats"] == {"rounds": 5, "median_ms": case.median_ms, "iqr_ms": case.iqr_ms,
                                           "min_ms": case.min_ms}
    assert case_to_dict(case)["name"] == case.name


def test_encode_record_sorts_sets():
    assert encode_record({"b", "a"}) == ["a", "b"]
    assert encode_record(frozenset({(2, 1), (1, 2)})) == [[1, 2], [2, 1]]


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
    assert run.environment == make_run([make_case()]).environment and run.schema_version == SCHEMA_VERSION
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


def test_merge_keeps_each_case_apart(make_case, make_run):
    runs = [make_run([make_case(seed=i, rounds=4), make_case(strategy="expand", median_ms=20.0, seed=i, rounds=4)])
            for i in range(2)]
    merged = merge_runs(runs)
    assert [(c.name, c.rounds) for c in merged.cases] == [
        ("latent_prep[single_frame-1280x720-81f]", 8), ("latent_prep[expand-1280x720-81f]", 8)]
    assert merged.cases[1].run_medians_ms == tuple(r.cases[1].median_ms for r in runs)


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


def test_schema_1_slowdowns_become_injected_labels(make_case, make_run):
    data = run_to_dict(make_run([make_case()]))
    case = {k: v for k, v in data["cases"][0].items() if k not in ("injected", "warmup_ms", "equivalence")}
    for slowdown, injected in ((None, ()), (0.1, ("slowdown 0.1",))):
        v1 = {**data, "schema_version": 1, "cases": [{**case, "extra": {"injected_slowdown": slowdown,
                                                                       "warmup_ms": [5.0]}}]}
        run = run_from_dict(v1)
        assert run.cases[0].injected == injected and run.cases[0].warmup_ms == (5.0,)
        assert run.schema_version == SCHEMA_VERSION  # upgraded: saved again, it is a schema 2 file


def test_schema_1_equivalence_takes_the_worst_tensor_and_its_rule(make_case, make_run):
    data = run_to_dict(make_run([make_case()]))
    case = {k: v for k, v in data["cases"][0].items() if k != "equivalence"}
    report = {"equivalent": True, "bitwise": False, "rtol": 0.0078125,
              "frame0": {"max_abs_err": 0.5, "max_rel_err": 0.001}, "latents": {"max_abs_err": 0.25, "max_rel_err": 0.002}}
    run = run_from_dict({**data, "schema_version": 1, "cases": [{**case, "extra": {"equivalence": report}}]})
    eq = run.cases[0].equivalence
    assert (eq.equivalent, eq.bitwise, eq.max_abs_err, eq.max_rel_err) == (True, False, 0.5, 0.002)
    assert eq.reference == "expand" and eq.rule == "bitwise, else normwise relative error <= 0.0078125"
    no_rtol = {k: v for k, v in report.items() if k != "rtol"}
    run = run_from_dict({**data, "schema_version": 1, "cases": [{**case, "extra": {"equivalence": no_rtol}}]})
    assert run.cases[0].equivalence.rule == ""


def test_a_case_without_a_usable_name_is_named_by_position(make_case, make_run):
    data = run_to_dict(make_run([make_case()]))
    bad = {**data["cases"][0], "name": 5, "samples_ms": []}
    with pytest.raises(InputError, match=r"^r\.cases\[0\]\.samples_ms: must hold"):
        run_from_dict({**data, "cases": [bad]}, source="r")


def test_merge_takes_the_first_runs_metadata_and_pools_stages(make_case, make_run):
    first = make_run([make_case(rounds=5, warmup_ms=(9.0,), stage_samples_ms={"denoise": (1.0, 2.0)})],
                     hostname="a", argv="bench run 1", suite_wall_s=30.0)
    second = make_run([make_case(rounds=5, seed=1, warmup_ms=(8.0,), stage_samples_ms={"denoise": (3.0,)})],
                      hostname="b", argv="bench run 2", date_utc="2025-01-02T00:00:00Z")
    merged = merge_runs([first, second])
    env = merged.environment
    assert env.hostname == "a" and env.argv == "merged" and env.suite_wall_s is None
    assert env.merged_runs == ("2025-01-01T00:00:00Z bench run 1", "2025-01-02T00:00:00Z bench run 2")
    (case,) = merged.cases
    assert case.warmup_ms == (9.0,) and case.stage_samples_ms == {"denoise": (1.0, 2.0, 3.0)}
    assert case.samples_ms == first.cases[0].samples_ms + second.cases[0].samples_ms
    assert case.counters is None and case.run_device_medians_ms == ()


def test_merge_names_the_unlike_value(make_case, make_run):
    with pytest.raises(InputError) as err:
        merge_runs([make_run([make_case()]), make_run([make_case()], preset="tiny")])
    assert str(err.value) == "runs.preset: must be the same in every merged run ('wan22') (got 'tiny')"
    with pytest.raises(InputError) as err:
        merge_runs([make_run([make_case()]), make_run([make_case()], negative_controls=("x",))])
    assert str(err.value) == "runs.negative_controls: must be empty in every merged run (got ['x'])"
    with pytest.raises(InputError) as err:
        merge_runs([make_run([make_case()])])
    assert str(err.value) == "runs: merging needs at least two runs (got 1)"


def _counters(launches=10, kernels=(("gemm", 2),), device=(1.0, 1.2), **fields) -> WorkCounters:
    values = {"h2d_copies": 0, "h2d_bytes": 0, "d2h_copies": 0, "d2h_bytes": 0, "syncs": 0, "flops": 100, **fields}
    return WorkCounters(source="cuda", profiled_rounds=len(device), kernel_launches=launches,
                        device_ms_samples=device, top_kernels=tuple(KernelStat(n, k, 0.1) for n, k in kernels), **values)


def test_merge_counters_pools_rounds_and_names_what_differs():
    a, b = _counters(), _counters(launches=12, kernels=(("gemm", 3),), device=(2.0,), syncs=1)
    merged = merge_counters([a, b])
    assert merged.profiled_rounds == 3 and merged.device_ms_samples == (1.0, 1.2, 2.0)
    assert merged.kernel_launches == 12 and merged.syncs == 1 and merged.flops == 100
    assert merged.varying_counters == ("kernel_launches", "syncs", "top_kernels")
    assert merged.top_kernels == a.top_kernels  # the first run's list, flagged as varying
    assert merge_counters([a, _counters()]).varying_counters == ()
    assert merge_counters([b, a]).top_kernels == b.top_kernels


def test_merging_runs_merges_their_counters(make_case, make_run):
    runs = [make_run([make_case(seed=i, counters=_counters(device=d))]) for i, d in enumerate([(1.0, 1.0), (3.0, 3.0)])]
    (case,) = merge_runs(runs).cases
    assert case.counters == merge_counters([_counters(device=(1.0, 1.0)), _counters(device=(3.0, 3.0))])
    assert case.run_device_medians_ms == (1.0, 3.0)


def test_the_last_equals_sign_splits_a_pattern_value():
    from bench.core.records import parse_pattern_values

    assert parse_pattern_values(["latent_prep[a=b]=0.5"], "x") == {"latent_prep[a=b]": 0.5}


def test_zero_device_time_and_one_step_are_allowed(make_case):
    from bench.core.records import KernelStat

    assert KernelStat("k", 1, 0.0).device_ms == 0.0
    assert make_case("e2e", num_inference_steps=1).num_inference_steps == 1


def test_a_json_file_is_staged_beside_its_target_as_a_hidden_tmp_file(tmp_path, monkeypatch):
    import bench.core.records as records_module

    staged = []
    real_link = records_module.os.link

    def link(src, dst):
        staged.append(Path(src))
        return real_link(src, dst)

    monkeypatch.setattr(records_module.os, "link", link)
    write_json_atomic(tmp_path / "sub" / "run.json", {"a": 1})
    (tmp,) = staged
    assert tmp.parent == tmp_path / "sub" and tmp.name.startswith(".run.json.") and tmp.name.endswith(".tmp")
    assert not tmp.exists()


def test_merge_refuses_the_same_run_twice(make_case, make_run):
    from bench.core.records import merge_runs, run_fingerprint

    a, b = make_run([make_case(seed=0)]), make_run([make_case(seed=1)])
    assert run_fingerprint(a) == run_fingerprint(make_run([make_case(seed=0)], date_utc="another day"))
    assert run_fingerprint(a) != run_fingerprint(b)
    with pytest.raises(InputError, match=r"runs\[2\]: must be another run than runs\[0\]: the same run twice"):
        merge_runs([a, b, a])
    assert len(merge_runs([a, b]).cases[0].run_medians_ms) == 2
