"""Typed benchmark records (a frozen case spec plus raw samples) and their one JSON serializer."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cosmos3.errors import InputError

# Bump when a field changes meaning; the loader fills in fields that older files lack.
SCHEMA_VERSION = 1


@dataclass(frozen=True, order=True)
class CaseSpec:
    """What was measured. `name` is the id used everywhere: `latent_prep[single_frame-1280x720-81f]`.

    Resolutions read WIDTHxHEIGHT, as in the upstream resolution list (1280x720 is 720p landscape).
    """

    benchmark: str  # "latent_prep" | "vae_encode" | "e2e"
    width: int
    height: int
    num_frames: int
    strategy: str | None = None  # "single_frame" | "expand"; None where no strategy applies

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def name(self) -> str:
        parts = ([self.strategy] if self.strategy else []) + [self.resolution, f"{self.num_frames}f"]
        return f"{self.benchmark}[{'-'.join(parts)}]"


def matches(name: str, pattern: str) -> bool:
    """Shell-style match of a case name where only * and ? are wild, so `e2e[*]` matches every e2e case."""
    # fnmatch reads [...] as a character class; case names use brackets literally.
    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


@dataclass(frozen=True)
class CaseResult:
    """Raw samples of one case. Statistics are derived, never stored twice in memory."""

    spec: CaseSpec
    samples_ms: tuple[float, ...]
    # Largest `torch.cuda.max_memory_allocated` over the timed rounds; None where not measurable (CPU).
    peak_mem_gib: float | None = None
    # Memory already allocated when the case started (weights): peak_mem_gib minus this is the working set.
    resident_mem_gib: float | None = None
    # Per-stage raw samples of an end-to-end case, stage name -> one value per round.
    stage_samples_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Anything else worth keeping with the case (e.g. the frame-0 equivalence report).
    extra: dict[str, Any] = field(default_factory=dict)
    # The median of each run merged into this record (a baseline measured in several processes);
    # empty for a single run. Their spread is the run-to-run noise the gate allows for.
    run_medians_ms: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rounds(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def q1_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 25))

    @property
    def q3_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 75))

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def stage_median_ms(self) -> dict[str, float]:
        return {stage: float(np.median(v)) for stage, v in self.stage_samples_ms.items()}


@dataclass(frozen=True)
class Environment:
    """Where a run happened. `device_slug` keys the baseline folder: baselines/<device_slug>/<preset>.json."""

    device_kind: str  # "cuda" | "cpu"
    device_name: str  # e.g. "NVIDIA H100 80GB HBM3"
    device_slug: str  # e.g. "nvidia-h100-80gb-hbm3"
    preset: str
    dtype: str
    torch: str
    diffusers: str
    python: str
    platform: str = ""
    cuda: str | None = None
    cudnn: str | None = None
    driver: str | None = None
    cudnn_benchmark: bool | None = None
    allow_tf32_matmul: bool | None = None
    commit: str | None = None
    commit_dirty: bool | None = None
    date_utc: str = ""
    hostname: str = ""
    # Negative controls switched on for this run (e.g. an injected slowdown); a baseline must have none.
    negative_controls: tuple[str, ...] = ()
    argv: str = ""
    suite_wall_s: float | None = None  # the whole benchmark process, model builds and warm-ups included
    # The runs a merged baseline was built from (their dates and commands); empty for a single run.
    merged_runs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunRecord:
    """One benchmark run: its environment and every case, in the order they ran."""

    environment: Environment
    cases: tuple[CaseResult, ...]
    schema_version: int = SCHEMA_VERSION

    def by_name(self) -> dict[str, CaseResult]:
        return {case.name: case for case in self.cases}


def _case_to_dict(case: CaseResult) -> dict[str, Any]:
    out = {
        "name": case.name,
        "spec": dataclasses.asdict(case.spec),
        "samples_ms": list(case.samples_ms),
        "peak_mem_gib": case.peak_mem_gib,
        "resident_mem_gib": case.resident_mem_gib,
        "stage_samples_ms": {k: list(v) for k, v in case.stage_samples_ms.items()},
        "extra": case.extra,
        "run_medians_ms": list(case.run_medians_ms),
        # Written for people reading the file; the loader ignores it and derives them again.
        "stats": {
            "rounds": case.rounds,
            "median_ms": case.median_ms,
            "iqr_ms": case.iqr_ms,
            "min_ms": case.min_ms,
        },
    }
    return out


def run_to_dict(run: RunRecord) -> dict[str, Any]:
    return {
        "schema_version": run.schema_version,
        "environment": dataclasses.asdict(run.environment),
        "cases": [_case_to_dict(c) for c in run.cases],
    }


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def run_from_dict(data: dict[str, Any], *, source: str = "run record") -> RunRecord:
    """Parse a run record, filling in fields older files lack; raise InputError naming what is wrong."""
    if not isinstance(data, dict):
        raise InputError(source, "must be a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputError(
            f"{source}.schema_version", f"must be an integer <= {SCHEMA_VERSION} (this tool's schema)", version
        )
    try:
        env_fields = _known_fields(Environment, data["environment"])
        for key in ("negative_controls", "merged_runs"):
            env_fields[key] = tuple(env_fields.get(key, ()))
        env = Environment(**env_fields)
        cases = []
        for raw in data["cases"]:
            spec = CaseSpec(**_known_fields(CaseSpec, raw["spec"]))
            samples = tuple(float(x) for x in raw["samples_ms"])
            if not samples:
                raise InputError(f"{source}.cases[{spec.name}].samples_ms", "must hold at least one sample")
            cases.append(
                CaseResult(
                    spec=spec,
                    samples_ms=samples,
                    peak_mem_gib=raw.get("peak_mem_gib"),
                    resident_mem_gib=raw.get("resident_mem_gib"),
                    stage_samples_ms={k: tuple(v) for k, v in raw.get("stage_samples_ms", {}).items()},
                    extra=raw.get("extra", {}),
                    run_medians_ms=tuple(float(x) for x in raw.get("run_medians_ms", ())),
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(source, f"is not a valid run record: {type(exc).__name__}: {exc}") from exc
    return RunRecord(environment=env, cases=tuple(cases), schema_version=version)


def load_run(path: Path | str, *, what: str = "run record") -> RunRecord:
    """Read a run record (a baseline is one too). Absent, unreadable or corrupt files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(what, "file does not exist", str(path))
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(what, f"must be readable JSON ({exc})", str(path)) from exc
    return run_from_dict(data, source=f"{what} {path}")


def merge_runs(runs: list[RunRecord]) -> RunRecord:
    """One record from several runs of the same suite on the same device, e.g. a baseline measured in
    several processes: samples pooled, each run's median kept (run_medians_ms), the highest peak memory.

    Runs in one process share its state (clocks, host load, allocator), so their rounds understate
    how much a fresh process varies; the spread of per-run medians is what a new run is compared to.
    """
    if len(runs) < 2:
        raise InputError("runs", "merging needs at least two runs", len(runs))
    first = runs[0].environment
    for run in runs:
        env = run.environment
        for key in ("device_slug", "preset", "dtype"):
            if getattr(env, key) != getattr(first, key):
                raise InputError(f"runs.{key}", f"must be the same in every merged run ({getattr(first, key)!r})",
                                 getattr(env, key))
        if env.negative_controls:
            raise InputError("runs.negative_controls", "must be empty in every merged run",
                             list(env.negative_controls))
    grouped: dict[str, list[CaseResult]] = {}
    for run in runs:
        for case in run.cases:
            grouped.setdefault(case.name, []).append(case)
    cases = []
    for group in grouped.values():
        peaks = [c.peak_mem_gib for c in group if c.peak_mem_gib is not None]
        stages: dict[str, tuple[float, ...]] = {}
        for c in group:
            for stage, values in c.stage_samples_ms.items():
                stages[stage] = stages.get(stage, ()) + tuple(values)
        cases.append(dataclasses.replace(
            group[0],
            samples_ms=tuple(x for c in group for x in c.samples_ms),
            peak_mem_gib=max(peaks) if peaks else None,
            stage_samples_ms=stages,
            run_medians_ms=tuple(m for c in group for m in (c.run_medians_ms or (c.median_ms,))),
        ))
    sources = tuple(s for run in runs for s in (run.environment.merged_runs
                                                or (f"{run.environment.date_utc} {run.environment.argv}".strip(),)))
    env = dataclasses.replace(first, merged_runs=sources, suite_wall_s=None, argv="merged")
    return RunRecord(environment=env, cases=tuple(cases))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path | str, payload: Any, *, overwrite: bool = False) -> Path:
    """Write JSON to a temporary file beside `path`, fsync it, then rename it into place.

    A reader never sees a half-written file, and an existing file is replaced only when
    `overwrite` is given; otherwise InputError names the file and the flag to pass.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as any other
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if `path` exists, so two writers can never clobber each other.
            os.link(tmp, path)
    except FileExistsError:
        raise InputError("output", "file exists; pass --force to replace it", str(path)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def save_run(run: RunRecord, path: Path | str, *, overwrite: bool = False) -> Path:
    return write_json_atomic(path, run_to_dict(run), overwrite=overwrite)


def run_from_pytest_benchmark(data: dict[str, Any], *, source: str = "pytest-benchmark JSON") -> RunRecord:
    """Rebuild the run record from pytest-benchmark's --benchmark-json output (raw data in seconds)."""
    try:
        env_fields = _known_fields(Environment, data["machine_info"]["cosmos3_environment"])
        env_fields["negative_controls"] = tuple(env_fields.get("negative_controls", ()))
        cases = []
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            cases.append(
                CaseResult(
                    spec=CaseSpec(**info["spec"]),
                    samples_ms=tuple(s * 1e3 for s in bench["stats"]["data"]),
                    peak_mem_gib=info.get("peak_mem_gib"),
                    resident_mem_gib=info.get("resident_mem_gib"),
                    stage_samples_ms={k: tuple(v) for k, v in info.get("stage_samples_ms", {}).items()},
                    extra={k: v for k, v in info.items() if k in _EXTRA_KEYS},
                )
            )
    except (KeyError, TypeError) as exc:
        raise InputError(source, f"lacks what the cosmos3 benchmarks write ({type(exc).__name__}: {exc})") from exc
    return RunRecord(environment=Environment(**env_fields), cases=tuple(cases))


# extra_info keys worth carrying into the run record (the rest is already a typed field).
_EXTRA_KEYS = ("equivalence", "warmup_ms", "injected_slowdown", "num_inference_steps")
