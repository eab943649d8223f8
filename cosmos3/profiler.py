"""A process-wide torch.profiler session per request, its trace export and the denoise-step coverage check."""

from __future__ import annotations

import gzip
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from cosmos3 import strict_json
from cosmos3.errors import InputError

# The denoising stage wraps every step in record_function(DENOISE_STEP_EVENT); coverage counts them.
DENOISE_STEP_EVENT = "cosmos3.denoise_step"
# record_function shows up once on the host ("user_annotation") and, on CUDA, again on the device
# timeline ("gpu_user_annotation"); counting the host copy counts each step once.
_STEP_EVENT_CATEGORY = "user_annotation"

ProfileMode = Literal["steps", "all_stages"]

_active: RequestProfiler | None = None


def get_active_profiler() -> RequestProfiler | None:
    """The profiler of the request being profiled in this process, if any (upstream's singleton)."""
    return _active


def _activities() -> list[ProfilerActivity]:
    acts = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(ProfilerActivity.CUDA)
    return acts


@dataclass(frozen=True)
class ProfileOptions:
    """What a profiled request records (upstream's --profile --num-profiled-timesteps N)."""

    out_dir: Path = Path("results/traces")
    mode: ProfileMode = "steps"
    num_profiled_timesteps: int = -1  # -1: every denoising step

    def __post_init__(self) -> None:
        if self.mode not in ("steps", "all_stages"):
            raise InputError("profile_mode", "must be 'steps' or 'all_stages'", self.mode)
        if self.num_profiled_timesteps == 0 or self.num_profiled_timesteps < -1:
            raise InputError(
                "num_profiled_timesteps", "must be a positive step count, or -1 for all steps",
                self.num_profiled_timesteps,
            )


class RequestProfiler:
    """torch.profiler around one request, with CPU and (when present) CUDA activities.

    mode "steps": started by the pipeline just before denoising; records `num_profiled_timesteps`
    denoising steps (-1 = all) and is advanced once per step by the denoise loop.
    mode "all_stages": records every stage of the request, start to end.
    The trace is exported once, as a gzip Chrome/Perfetto JSON, to a new file under `out_dir`.
    """

    def __init__(self, options: ProfileOptions) -> None:
        self.options = options
        self.out_dir = Path(options.out_dir)
        self.mode = options.mode
        self.num_profiled_timesteps = options.num_profiled_timesteps
        self.steps_taken = 0
        self.trace_path: Path | None = None
        self._prof: profile | None = None

    @property
    def expected_steps(self) -> int | None:
        """Denoising steps the trace must hold; None means 'all the request's steps'."""
        return None if self.mode == "all_stages" or self.num_profiled_timesteps == -1 else self.num_profiled_timesteps

    @property
    def running(self) -> bool:
        return self._prof is not None

    def start(self) -> RequestProfiler:
        global _active
        if _active is not None:
            raise RuntimeError("a request profiler is already active in this process")
        sched = None
        if self.expected_steps is not None:
            # Record exactly N steps from the first one; the trace is exported when they are done.
            # No profiler warm-up: upstream captures the first N steps, and so do we.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Profiler won't be using warmup")
                sched = schedule(wait=0, warmup=0, active=self.expected_steps, repeat=1)
        self._prof = profile(activities=_activities(), schedule=sched, on_trace_ready=self._export)
        self._prof.start()
        _active = self
        return self

    def step(self) -> None:
        """Advance the schedule by one denoising step (called by the denoise loop, never by warm-ups)."""
        if self._prof is None:
            raise RuntimeError("step() before start()")
        self._prof.step()
        self.steps_taken += 1

    def stop(self) -> Path:
        """Stop recording; export the trace unless the schedule already did. Returns the trace path."""
        global _active
        if self._prof is None:
            raise RuntimeError("stop() before start()")
        try:
            self._prof.stop()
            if self.trace_path is None:
                self._export(self._prof)
        finally:
            _active = None
            self._prof = None
        return self.trace_path

    def _export(self, prof: profile) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        final = self.out_dir / f"trace-{self.mode}-{stamp}-{os.getpid()}-{id(self):x}.json.gz"
        tmp = final.with_name(f".{final.name}.tmp.json.gz")
        prof.export_chrome_trace(str(tmp))
        read_trace(tmp)  # a trace that is not one complete gzip JSON never gets its final name
        os.replace(tmp, final)
        self.trace_path = final


def read_trace(path: Path | str) -> dict:
    """Load a gzip Chrome trace; InputError unless it is one complete gzip JSON with traceEvents."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            data = strict_json.loads(handle.read(), f"trace {path}")
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError("trace", f"must be one complete gzip JSON file ({type(exc).__name__}: {exc})",
                         str(path)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise InputError("trace", "must be a Chrome trace object with a traceEvents list", str(path))
    return data


def count_denoise_steps(path: Path | str) -> int:
    """Denoising steps recorded in a trace: host-side DENOISE_STEP_EVENT spans."""
    events = read_trace(path)["traceEvents"]
    return sum(
        1
        for e in events
        if e.get("name") == DENOISE_STEP_EVENT and e.get("cat") == _STEP_EVENT_CATEGORY and e.get("ph") == "X"
    )


@dataclass(frozen=True)
class Coverage:
    """How many denoising steps a trace holds, and how often the loop advanced the profiler, against how
    many steps were asked for.

    The trace alone cannot tell a loop that steps the profiler from one that never does whenever the
    recording window holds every step (N = -1, or N = the request's steps): the un-stepped profiler then
    records them all in its first step. So the loop's own stepping is checked too: at least one
    profiler step per expected denoising step.
    """

    trace_path: Path
    expected_steps: int
    found_steps: int
    profiler_steps: int  # RequestProfiler.step() calls made by the denoise loop while recording

    @property
    def ok(self) -> bool:
        return self.found_steps == self.expected_steps and self.profiler_steps >= self.expected_steps

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAIL"
        text = f"{verdict}: {self.found_steps} of {self.expected_steps} expected denoising steps in {self.trace_path}"
        if self.profiler_steps < self.expected_steps:
            text += (f"; the denoise loop advanced the profiler {self.profiler_steps} times, "
                     f"not once per step ({self.expected_steps})")
        return text


def check_coverage(path: Path | str, expected_steps: int, profiler_steps: int) -> Coverage:
    """The trace must hold exactly `expected_steps` denoising steps, no fewer and no more, and the loop
    must have stepped the profiler once for each."""
    return Coverage(Path(path), expected_steps, count_denoise_steps(path), profiler_steps)
