"""Every rule of the records, broken once, with the exact message a user reads.

A message is the interface of a rule: it names the field (from the file's point of view), the rule
and the value. Pinning each one whole means that a rule that stops firing, fires on the wrong field
or loses its words fails here, not in a user's terminal.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest

from bench.core.records import (
    CaseResult,
    CaseSpec,
    Environment,
    EquivalenceRecord,
    KernelStat,
    RunRecord,
    WorkCounters,
    decode_record,
    parse_pattern_values,
    run_from_dict,
    run_from_pytest_benchmark,
)
from cosmos3.errors import InputError

SPEC = {"benchmark": "latent_prep", "width": 96, "height": 64, "num_frames": 9, "strategy": "single_frame"}
CASE = {"spec": SPEC, "samples_ms": [1.0, 2.0]}
NAME = "latent_prep[single_frame-96x64-9f]"
CPU_COUNTERS = {"source": "cpu", "profiled_rounds": 2, "kernel_launches": 10, "h2d_copies": 0, "h2d_bytes": 0,
                "d2h_copies": 0, "d2h_bytes": 0, "syncs": 0, "flops": 0, "device_ms_samples": [],
                "top_kernels": [{"name": "aten::mm", "launches": 2, "device_ms": None}]}
CUDA_COUNTERS = {**CPU_COUNTERS, "source": "cuda", "device_ms_samples": [1.0, 1.5],
                 "top_kernels": [{"name": "gemm", "launches": 2, "device_ms": 0.5}]}
ENV = {"device_kind": "cpu", "device_name": "cpu", "device_slug": "cpu", "preset": "tiny", "dtype": "float32",
       "torch": "2.13.0", "diffusers": "0.42.1", "python": "3.11.7"}
EQ = {"equivalent": True, "bitwise": True, "max_abs_err": 0.0, "max_rel_err": 0.0}


def w(data: dict, **changes) -> dict:
    """A deep copy of `data` with some fields replaced."""
    return {**copy.deepcopy(data), **changes}


def run(*cases, version=2, **extra) -> dict:
    return {"schema_version": version, "environment": ENV, "cases": list(cases), **extra}


def bench_json(*benchmarks) -> dict:
    return {"machine_info": {"cosmos3_environment": ENV}, "benchmarks": list(benchmarks)}


def v1_case(extra) -> dict:
    return w(CASE, extra=extra)


RULES = [
    (lambda: decode_record(CaseSpec, w(SPEC, benchmark=""), "spec"), "spec.benchmark: must be a non-empty name (got '')"),
    (lambda: decode_record(CaseSpec, w(SPEC, width=0), "spec"), "spec.width: must be >= 1 (got 0)"),
    (lambda: decode_record(CaseSpec, w(SPEC, height=-1), "spec"), "spec.height: must be >= 1 (got -1)"),
    (lambda: decode_record(CaseSpec, w(SPEC, num_frames=0), "spec"), "spec.num_frames: must be >= 1 (got 0)"),
    (lambda: decode_record(CaseResult, w(CASE, samples_ms=[]), "case"), "case.samples_ms: must hold at least one sample"),
    (lambda: decode_record(CaseResult, w(CASE, samples_ms=[1.0, math.nan]), "case"),
     "case.samples_ms[1]: must be finite and > 0 (got nan)"),
    (lambda: decode_record(CaseResult, w(CASE, samples_ms=[0.0]), "case"),
     "case.samples_ms[0]: must be finite and > 0 (got 0.0)"),
    (lambda: decode_record(CaseResult, w(CASE, warmup_ms=[-1.0]), "case"),
     "case.warmup_ms[0]: must be finite and > 0 (got -1.0)"),
    (lambda: decode_record(CaseResult, w(CASE, run_medians_ms=[math.inf]), "case"),
     "case.run_medians_ms[0]: must be finite and > 0 (got inf)"),
    (lambda: decode_record(CaseResult, w(CASE, run_device_medians_ms=[0.0]), "case"),
     "case.run_device_medians_ms[0]: must be finite and > 0 (got 0.0)"),
    (lambda: decode_record(CaseResult, w(CASE, stage_samples_ms={"denoise": [0.0, -2.0]}), "case"),
     "case.stage_samples_ms.denoise[1]: must be finite and >= 0 (got -2.0)"),
    (lambda: decode_record(CaseResult, w(CASE, stage_samples_ms={"denoise": []}), "case"),
     "case.stage_samples_ms.denoise: must hold at least one sample"),
    (lambda: decode_record(CaseResult, w(CASE, peak_mem_gib=math.nan), "case"),
     "case.peak_mem_gib: must be finite and >= 0 (got nan)"),
    (lambda: decode_record(CaseResult, w(CASE, resident_mem_gib=-0.5), "case"),
     "case.resident_mem_gib: must be finite and >= 0 (got -0.5)"),
    (lambda: decode_record(CaseResult, w(CASE, num_inference_steps=0), "case"),
     "case.num_inference_steps: must be >= 1 (got 0)"),
    (lambda: decode_record(EquivalenceRecord, w(EQ, max_abs_err=math.nan), "eq"),
     "eq.max_abs_err: must be >= 0 (inf where shapes differ) (got nan)"),
    (lambda: decode_record(EquivalenceRecord, w(EQ, max_rel_err=-1.0), "eq"),
     "eq.max_rel_err: must be >= 0 (inf where shapes differ) (got -1.0)"),
    (lambda: decode_record(EquivalenceRecord, w(EQ, equivalent=False), "eq"),
     "eq.equivalent: must be true when bitwise is (got False)"),
    (lambda: decode_record(KernelStat, {"name": "", "launches": 1, "device_ms": None}, "k"),
     "k.name: must be a non-empty string (got '')"),
    (lambda: decode_record(KernelStat, {"name": "a", "launches": -1, "device_ms": None}, "k"),
     "k.launches: must not be negative (got -1)"),
    (lambda: decode_record(KernelStat, {"name": "a", "launches": 1, "device_ms": math.nan}, "k"),
     "k.device_ms: must be finite and >= 0 (got nan)"),
    (lambda: decode_record(KernelStat, {"name": "a", "launches": 1, "device_ms": -0.1}, "k"),
     "k.device_ms: must be finite and >= 0 (got -0.1)"),
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, top_kernels=3), "c"),
     "c.top_kernels: must be a list (tuple[KernelStat, ...]) (got 3)"),  # a record type by its own name
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, source="gpu"), "c"),
     "c.source: must be one of ('cuda', 'cpu') (got 'gpu')"),
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, profiled_rounds=0), "c"),
     "c.profiled_rounds: must be at least 1 (got 0)"),
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, syncs=-1), "c"), "c.syncs: must not be negative (got -1)"),
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, flops=-2), "c"), "c.flops: must not be negative (got -2)"),
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, device_ms_samples=[1.0, 1.0]), "c"),
     "c.device_ms_samples: must be empty for source 'cpu' (no device) (got [1.0, 1.0])"),
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, top_kernels=[
        {"name": "a", "launches": 1, "device_ms": None}, {"name": "b", "launches": 1, "device_ms": 0.5}]), "c"),
     "c.top_kernels[1].device_ms: must be null for source 'cpu' (no device) (got 0.5)"),
    (lambda: decode_record(WorkCounters, w(CUDA_COUNTERS, device_ms_samples=[1.0]), "c"),
     "c.device_ms_samples: must hold one value per profiled round (2) (got 1)"),
    (lambda: decode_record(WorkCounters, w(CUDA_COUNTERS, device_ms_samples=[1.0, math.nan]), "c"),
     "c.device_ms_samples[1]: must be finite and >= 0 (got nan)"),
    (lambda: decode_record(WorkCounters, w(CUDA_COUNTERS, top_kernels=[
        {"name": "a", "launches": 1, "device_ms": 0.1}, {"name": "b", "launches": 1, "device_ms": None}]), "c"),
     "c.top_kernels[1].device_ms: must be a number for source 'cuda'"),
    (lambda: decode_record(WorkCounters, w(CPU_COUNTERS, varying_counters=["syncs", "bogus"]), "c"),
     # The names in bench.core.records.COUNTERS' order (the gate's and the table's), since counters are one registry.
     ("c.varying_counters[1]: must be one of ('kernel_launches', 'syncs', 'h2d_copies', 'h2d_bytes', 'd2h_copies', "
     "'d2h_bytes', 'flops', 'top_kernels') (got 'bogus')")),
    (lambda: decode_record(Environment, w(ENV, device_slug=""), "env"), "env.device_slug: must be a non-empty name (got '')"),
    (lambda: decode_record(Environment, w(ENV, preset=""), "env"), "env.preset: must be a non-empty name (got '')"),
    (lambda: decode_record(Environment, w(ENV, suite_wall_s=-1.0), "env"),
     "env.suite_wall_s: must be finite and >= 0 (got -1.0)"),
    (lambda: RunRecord(environment=decode_record(Environment, ENV, "e"), cases=(decode_record(CaseResult, CASE, "c"),),
                       schema_version=0), "schema_version: must be one of [1, 2] (got 0)"),
    # Whole run records, as `gate` and `baseline` read them.
    (lambda: run_from_dict([1], source="r"), "r: must be a JSON object (got 'list')"),
    (lambda: run_from_dict(run(CASE, version=True), source="r"),
     "r.schema_version: must be one of [1, 2] (this tool's schemas) (got True)"),
    (lambda: run_from_dict(run(CASE, version=3), source="r"),
     "r.schema_version: must be one of [1, 2] (this tool's schemas) (got 3)"),
    (lambda: run_from_dict(run(CASE, zz=1), source="r"), "r.zz: is not a field of a run record"),
    (lambda: run_from_dict({"schema_version": 2, "cases": [CASE]}, source="r"),
     "r: is not a valid run record: needs 'environment' and 'cases'"),
    (lambda: run_from_dict({"schema_version": 2, "environment": ENV}, source="r"),
     "r: is not a valid run record: needs 'environment' and 'cases'"),
    (lambda: run_from_dict({**run(), "cases": {}}, source="r"), "r.cases: must be a list (got 'dict')"),
    (lambda: run_from_dict(run(), source="r"),
     "r.cases: must hold at least one case (a run that measured nothing proves nothing)"),
    (lambda: run_from_dict(run(CASE, CASE), source="r"), f"r.cases: must name each case once (got '{NAME}')"),
    (lambda: run_from_dict(run(w(CASE, name="x[y]")), source="r"),
     f"r.cases[x[y]].name: must match its spec ({NAME}) (got 'x[y]')"),
    (lambda: run_from_dict(run(CASE, w(CASE, samples_ms=[])), source="r"),
     "r.cases[1].samples_ms: must hold at least one sample"),
    (lambda: run_from_dict(run(w(CASE, name=NAME, samples_ms=[-1.0])), source="r"),
     f"r.cases[{NAME}].samples_ms[0]: must be finite and > 0 (got -1.0)"),
    (lambda: run_from_dict(run(w(CASE, name="", samples_ms=[-1.0])), source="r"),
     "r.cases[0].samples_ms[0]: must be finite and > 0 (got -1.0)"),
    (lambda: run_from_dict(run(CASE, "x"), source="r"), "r.cases[1]: must be a JSON object (CaseResult) (got 'str')"),
    (lambda: run_from_dict(run(w(CASE, bogus=1)), source="r"),
     ("r.cases[0].bogus: is not a field of CaseResult (known: ['counters', 'equivalence', 'gpu_after', 'gpu_before', "
     "'injected', "
     "'num_inference_steps', 'peak_mem_gib', 'resident_mem_gib', 'run_device_medians_ms', 'run_medians_ms', "
     "'samples_ms', 'spec', 'stage_samples_ms', 'warmup_ms'])")),
    # Schema 1 files, upgraded on load.
    (lambda: run_from_dict(run(v1_case([1]), version=1), source="r"), "r.cases[0].extra: must be a JSON object (got [1])"),
    (lambda: run_from_dict(run(v1_case({"foo": 1}), version=1), source="r"),
     "r.cases[0].extra.foo: is not a key schema 1 wrote"),
    (lambda: run_from_dict(run(v1_case({"equivalence": 3}), version=1), source="r"),
     "r.cases[0].extra.equivalence: must be a JSON object (got 3)"),
    (lambda: run_from_dict(run(v1_case({"equivalence": {
        "equivalent": True, "bitwise": True, "frame0": {"max_abs_err": "x", "max_rel_err": 0}}}), version=1), source="r"),
     "r.cases[0].extra.equivalence.max_abs_err: must be a number in every compared tensor (got ['x'])"),
    (lambda: run_from_dict(run(v1_case({"equivalence": {
        "equivalent": True, "bitwise": True, "frame0": {"max_abs_err": 0, "max_rel_err": False}}}), version=1),
        source="r"),
     "r.cases[0].extra.equivalence.max_rel_err: must be a number in every compared tensor (got [False])"),
    (lambda: run_from_dict(run(v1_case({"equivalence": {"equivalent": True, "bitwise": True}}), version=1), source="r"),
     "r.cases[0].extra.equivalence.max_abs_err: must be a number in every compared tensor (got [])"),
    (lambda: run_from_dict(run(v1_case({"warmup_ms": [0.0]}), version=1), source="r"),
     "r.cases[0].warmup_ms[0]: must be finite and > 0 (got 0.0)"),
    # pytest-benchmark's JSON, as the benchmark child writes it.
    (lambda: run_from_pytest_benchmark({"machine_info": {}}, source="pb"),
     "pb: lacks what the cosmos3 benchmarks write (KeyError: 'cosmos3_environment')"),
    (lambda: run_from_pytest_benchmark([], source="pb"),
     "pb: lacks what the cosmos3 benchmarks write (TypeError: list indices must be integers or slices, not str)"),
    (lambda: run_from_pytest_benchmark({**bench_json(), "benchmarks": {}}, source="pb"),
     "pb.benchmarks: must be a list (got 'dict')"),
    (lambda: run_from_pytest_benchmark(bench_json({"name": "t1"}), source="pb"),
     "pb.benchmarks[t1]: lacks extra_info or stats.data (KeyError: 'extra_info')"),
    (lambda: run_from_pytest_benchmark(bench_json({"name": "t1", "extra_info": {}, "stats": []}), source="pb"),
     "pb.benchmarks[t1]: lacks extra_info or stats.data (TypeError: list indices must be integers or slices, not str)"),
    (lambda: run_from_pytest_benchmark(bench_json(3), source="pb"),
     "pb.benchmarks[0]: lacks extra_info or stats.data (TypeError: 'int' object is not subscriptable)"),
    (lambda: run_from_pytest_benchmark(bench_json({"extra_info": {"spec": SPEC}, "stats": {"data": [1e-3]}}, {"extra_info": [],
                                                  "stats": {"data": []}}), source="pb"),
     "pb.benchmarks[1]: must hold an extra_info object and a stats.data list"),
    (lambda: run_from_pytest_benchmark(bench_json({"name": "t1", "extra_info": {}, "stats": {"data": {}}}), source="pb"),
     "pb.benchmarks[t1]: must hold an extra_info object and a stats.data list"),
    (lambda: run_from_pytest_benchmark(bench_json({"name": "t1", "extra_info": {"spec": SPEC},
                                                   "stats": {"data": [0.001, True]}}), source="pb"),
     "pb.benchmarks[t1].extra_info.samples_ms[1]: must be a number (got True)"),
    (lambda: run_from_pytest_benchmark(bench_json(), source="pb"),
     "pb.cases: must hold at least one case (a run that measured nothing proves nothing)"),
    (lambda: run_from_pytest_benchmark(bench_json({"extra_info": {"spec": SPEC}, "stats": {"data": [1e-3]}},
                                                  {"extra_info": {"spec": SPEC}, "stats": {"data": [1e-3]}}), source="pb"),
     f"pb.cases: must name each case once (got '{NAME}')"),
    (lambda: run_from_pytest_benchmark({"machine_info": {"cosmos3_environment": w(ENV, preset="")}, "benchmarks": []},
                                       source="pb"),
     "pb.machine_info.cosmos3_environment.preset: must be a non-empty name (got '')"),
    # The one parser of PATTERN=NUMBER options.
    (lambda: parse_pattern_values(["a=1", "b=x"], "inject_slowdown"),
     "inject_slowdown: must read PATTERN=NUMBER with a finite number, e.g. 'e2e[*]=0.10' (got 'b=x')"),
    (lambda: parse_pattern_values(["a"], "threshold"),
     "threshold: must read PATTERN=NUMBER with a finite number, e.g. 'e2e[*]=0.10' (got 'a')"),
    (lambda: parse_pattern_values(["=1"], "threshold"),
     "threshold: must read PATTERN=NUMBER with a finite number, e.g. 'e2e[*]=0.10' (got '=1')"),
    (lambda: parse_pattern_values(["a=nan"], "threshold"),
     "threshold: must read PATTERN=NUMBER with a finite number, e.g. 'e2e[*]=0.10' (got 'a=nan')"),
    (lambda: parse_pattern_values(["a=-inf"], "threshold"),
     "threshold: must read PATTERN=NUMBER with a finite number, e.g. 'e2e[*]=0.10' (got 'a=-inf')"),
]


@pytest.mark.parametrize("build, message", RULES, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(RULES)])
def test_each_rule_names_its_field_rule_and_value(build, message):
    with pytest.raises(InputError) as err:
        build()
    assert str(err.value) == message


# The type rules of the decoder, on a record with one field of each kind it reads.
@dataclass(frozen=True)
class Probe:
    flag: bool = False
    count: int = 0
    ms: float = 0.0
    name: str = ""
    nothing: None = None
    maybe: int | None = None
    values: tuple[float, ...] = ()
    table: dict[str, int] = field(default_factory=dict)
    spec: CaseSpec | None = None


@dataclass(frozen=True)
class Needs:
    size: int


@pytest.mark.parametrize("data, message", [
    ({"flag": 1}, "p.flag: must be true or false (got 1)"),
    ({"count": True}, "p.count: must be an integer (got True)"),
    ({"count": 1.5}, "p.count: must be an integer (got 1.5)"),
    ({"ms": "1"}, "p.ms: must be a number (got '1')"),
    ({"ms": False}, "p.ms: must be a number (got False)"),
    ({"name": 1}, "p.name: must be a string (got 1)"),
    ({"nothing": 0}, "p.nothing: must be null (got 0)"),
    ({"maybe": "a"}, "p.maybe: must be an integer (got 'a')"),
    ({"values": 1.0}, "p.values: must be a list (tuple[float, ...]) (got 1.0)"),
    ({"values": [1.0, "a"]}, "p.values[1]: must be a number (got 'a')"),
    ({"table": []}, "p.table: must be an object (dict[str, int]) (got [])"),
    ({"table": {1: 2}}, "p.table: must have string keys (got 1)"),
    ({"table": {"a": "b"}}, "p.table.a: must be an integer (got 'b')"),
    ({"spec": {"benchmark": "b", "width": 0, "height": 1, "num_frames": 1}}, "p.spec.width: must be >= 1 (got 0)"),
    ({"spec": {"benchmark": "b", "width": 1, "height": 1, "num_frames": 1, "fps": 3}},
     "p.spec.fps: is not a field of CaseSpec (known: ['benchmark', 'height', 'num_frames', 'strategy', 'width'])"),
    ({"spec": 1}, "p.spec: must be a JSON object (CaseSpec) (got 'int')"),
])
def test_each_type_rule_names_the_field_and_the_value(data, message):
    with pytest.raises(InputError) as err:
        decode_record(Probe, data, "p")
    assert str(err.value) == message


def test_the_decoder_reads_each_kind():
    probe = decode_record(Probe, {"flag": True, "count": 3, "ms": 3, "name": "n", "nothing": None, "maybe": None,
                                  "values": [1, 2.5], "table": {"a": 1},
                                  "spec": {"benchmark": "b", "width": 1, "height": 2, "num_frames": 3}}, "p")
    assert probe == Probe(True, 3, 3.0, "n", None, None, (1.0, 2.5), {"a": 1}, CaseSpec("b", 1, 2, 3))
    assert type(probe.ms) is float and type(probe.values[0]) is float
    assert decode_record(Probe, {"maybe": 4}, "p").maybe == 4
    assert decode_record(Probe, {}, "p") == Probe()


def test_a_missing_required_field_and_a_foreign_hint():
    with pytest.raises(InputError) as err:
        decode_record(Needs, {}, "n")
    assert str(err.value) == "n.size: is required"

    @dataclass(frozen=True)
    class Odd:
        bad: set

    with pytest.raises(TypeError) as type_err:  # a programming error, not bad input
        decode_record(Odd, {"bad": []}, "o")
    assert str(type_err.value) == "o.bad: records cannot hold <class 'set'>"
