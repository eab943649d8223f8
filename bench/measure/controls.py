"""What `python -m bench` asks of a measurement: the round policy and the negative controls (no torch here).

bench.measure.harness measures with them; bench.compare.protocol carries them to a compare worker, and the command line
builds them, so they live apart from torch and the profiler.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.core.records import CaseSpec, decode_record, encode_record, matches
from bench.core.strategies import BY_NAME, STRATEGIES
from cosmos3 import strict_json
from cosmos3.errors import InputError

# The one seam between `python -m bench` and its pytest child: a RunControls record as JSON.
CONTROLS_ENV = "COSMOS3_BENCH_CONTROLS"
# A one-sided Mann-Whitney test on 5 against 5 samples can reach p = 1/252 < 0.01; on 4 against 4
# its smallest p is 1/70 > 0.01, so fewer rounds could never show a regression at the default alpha.
MIN_ROUNDS = 5
# An injected slowdown beyond 10x the round's own time is no longer a "slowdown" of that case.
MAX_INJECTED_FRACTION = 10.0


@dataclass(frozen=True)
class RoundPolicy:
    """How many rounds a case gets: enough for a stable median within a time budget per case.

    Like triton's do_bench, the warm-up rounds (never recorded) also estimate the round
    time; the number of timed rounds then fills `target_ms`, clamped to [min, max].
    """

    warmup_rounds: int = 2
    min_rounds: int = MIN_ROUNDS
    max_rounds: int = 60
    target_ms: float = 2000.0

    def __post_init__(self) -> None:
        if not self.warmup_rounds >= 1:
            raise InputError("rounds", "needs WARMUP >= 1 (the first round pays for compilation and caches)", self)
        if not MIN_ROUNDS <= self.min_rounds <= self.max_rounds:
            raise InputError("rounds", f"needs {MIN_ROUNDS} <= MIN <= MAX (fewer rounds cannot show a regression)",
                             self)
        if not (math.isfinite(self.target_ms) and self.target_ms > 0):
            raise InputError("rounds", "needs a finite TARGET_MS > 0", self)

    def rounds_for(self, round_ms: float) -> int:
        wanted = math.ceil(self.target_ms / max(round_ms, 1e-3))
        return max(self.min_rounds, min(self.max_rounds, wanted))

    @classmethod
    def parse(cls, raw: str) -> RoundPolicy:
        """'WARMUP,MIN,MAX,TARGET_MS', e.g. '2,5,60,2000'."""
        try:
            warmup, lo, hi, target = raw.split(",")
            numbers = int(warmup), int(lo), int(hi), float(target)
        except ValueError:
            raise InputError("rounds", "must read WARMUP,MIN,MAX,TARGET_MS, e.g. 2,5,60,2000", raw) from None
        return cls(*numbers)


@dataclass(frozen=True)
class RunControls:
    """What the parent process asks of the benchmark child: the round policy and negative controls.

    Negative controls exist to prove that the gate can fail; a run with any is never a baseline.
    """

    rounds: RoundPolicy | None = None  # overrides every case's policy
    # Case pattern -> fraction: sleep that fraction of each timed round's own time in matching cases.
    slowdowns: dict[str, float] = field(default_factory=dict)
    # Case pattern -> fraction: a busy GPU kernel inside the measured function, sized to that fraction
    # of the case's device time (on the CPU, a host spin of that fraction of its round time).
    gpu_work: dict[str, float] = field(default_factory=dict)
    syncs: tuple[str, ...] = ()  # case patterns: one extra host-device synchronisation per round
    kernels: tuple[str, ...] = ()  # case patterns: one extra small kernel per round
    # Strategies (bench.core.strategies) whose cases run the path they replaced, under their own label.
    reverted: tuple[str, ...] = ()
    parent_pid: int | None = None  # the `python -m bench` process the child must not outlive

    def __post_init__(self) -> None:
        for option, fractions in (("inject_slowdown", self.slowdowns), ("inject_gpu_work", self.gpu_work)):
            for pattern, fraction in fractions.items():
                if not 0 < fraction <= MAX_INJECTED_FRACTION:
                    raise InputError(option, f"needs 0 < FRACTION <= {MAX_INJECTED_FRACTION:g}", f"{pattern}={fraction}")
        for option, patterns in (("inject_sync", self.syncs), ("inject_kernel", self.kernels)):
            for pattern in patterns:
                if not pattern:
                    raise InputError(option, "must be a case name or pattern, e.g. 'latent_prep[*]'", pattern)
        for name in self.reverted:
            if name not in BY_NAME:
                raise InputError("reverted", f"must name strategies among {', '.join(BY_NAME)}", name)

    def check_applies(self, specs: Sequence[CaseSpec]) -> None:
        """Each control must change at least one of the cases the run measures: one that applies to none
        would leave the run unchanged, and a gate that passes it would seem blind."""
        names = [spec.name for spec in specs]
        for option, patterns in (("inject_slowdown", self.slowdowns), ("inject_gpu_work", self.gpu_work),
                                 ("inject_sync", self.syncs), ("inject_kernel", self.kernels)):
            for pattern in patterns:
                if not any(matches(name, pattern) for name in names):
                    raise InputError(option, f"matches none of the {len(names)} cases this run measures", pattern)
        for strategy in STRATEGIES:
            if strategy.name in self.reverted and not any(spec.strategy == strategy.name for spec in specs):
                raise InputError(strategy.revert, f"needs a {strategy.name} case among the {len(names)} cases "
                                                  "this run measures", True)

    def to_env(self) -> str:
        return json.dumps(encode_record(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RunControls:
        raw = environ.get(CONTROLS_ENV)
        if not raw:
            return cls()
        return decode_record(cls, strict_json.loads(raw, CONTROLS_ENV), CONTROLS_ENV)

    def slowdown_for(self, case_name: str) -> float:
        """The injected slowdown fraction for a case (0 when no pattern matches)."""
        return _fraction_for(self.slowdowns, case_name)

    def gpu_work_for(self, case_name: str) -> float:
        return _fraction_for(self.gpu_work, case_name)

    def sync_for(self, case_name: str) -> bool:
        return any(matches(case_name, p) for p in self.syncs)

    def kernel_for(self, case_name: str) -> bool:
        return any(matches(case_name, p) for p in self.kernels)

    @property
    def active(self) -> tuple[str, ...]:
        """The negative controls switched on, as the run's environment records them."""
        out = [f"slowdown {p}={f:g}" for p, f in self.slowdowns.items()]
        out += [f"gpu work {p}={f:g}" for p, f in self.gpu_work.items()]
        out += [f"extra sync {p}" for p in self.syncs]
        out += [f"extra kernel {p}" for p in self.kernels]
        out += [s.reverted_note for s in STRATEGIES if s.name in self.reverted]
        return tuple(out)

    def strategy_for(self, label: str | None, *, replaced: str = "expand") -> str | None:
        """The encode strategy a case labelled `label` really runs (the label itself unless reverted).

        `replaced` is the path the single-frame encode replaced in the implementation the case runs: "expand"
        in this package's stage, "shipped" in diffusers' Cosmos3OmniPipeline (cosmos3.diffusers_omni).
        """
        if label in self.reverted:
            return BY_NAME[label].reverted_to(replaced)
        return label


def _fraction_for(fractions: Mapping[str, float], case_name: str) -> float:
    return max((f for p, f in fractions.items() if matches(case_name, p)), default=0.0)
