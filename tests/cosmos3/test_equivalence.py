"""The equivalence verdict itself: tolerance boundary, bitwise vs close, the report's wording.

Tensors here are hand-made so every error is exact in float32 (powers of two); the two encode
paths are replaced by a stub stage, so each test runs in milliseconds and checks only the verdict.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from cosmos3 import equivalence
from cosmos3.equivalence import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Agreement,
    EquivalenceReport,
    OracleReport,
    check_against_oracle,
    check_encode_equivalence,
    compare_tensors,
    fp32_oracle,
    rms_rel_err,
)
from cosmos3.errors import InputError
from tests import tiny

ULP = 2.0**-7  # one bf16 ulp relative to 1.0: the default relative tolerance


def test_default_tolerance_is_one_bf16_ulp_and_no_absolute_slack():
    assert DEFAULT_RTOL == ULP
    assert DEFAULT_ATOL == 0.0


def test_identical_tensors_are_bitwise():
    a = torch.tensor([1.0, -3.0, 0.5])
    agreement = compare_tensors("x", a, a.clone(), atol=0.0, rtol=0.0)
    assert agreement == Agreement("x", True, 0.0, 0.0, True)


def test_difference_of_exactly_the_tolerance_is_within():
    """The bound is inclusive: max|a-b| <= atol + rtol * max|b|."""
    old = torch.tensor([2.0, -1.0, 0.0])
    new = old + torch.tensor([0.0, 0.25 + 2 * ULP, 0.0])  # atol + rtol * scale, scale = 2
    agreement = compare_tensors("x", new, old, atol=0.25, rtol=ULP)
    assert agreement.max_abs_err == 0.25 + 2 * ULP
    assert agreement.within_tolerance and not agreement.bitwise


def test_difference_just_over_the_tolerance_is_not_within():
    old = torch.tensor([2.0, -1.0, 0.0])
    bound = 0.25 + 2 * ULP
    new = old.clone()
    new[2] = torch.nextafter(torch.tensor(bound), torch.tensor(1.0))  # one float32 step over
    agreement = compare_tensors("x", new, old, atol=0.25, rtol=ULP)
    assert not agreement.within_tolerance


@pytest.mark.parametrize(("atol", "rtol", "within"), [(0.25, 0.0, False), (0.0, ULP, False), (0.25, ULP, True)])
def test_atol_and_rtol_add_up(atol, rtol, within):
    old = torch.tensor([2.0, 0.0])
    new = old + torch.tensor([0.0, 0.25 + 2 * ULP])
    assert compare_tensors("x", new, old, atol=atol, rtol=rtol).within_tolerance is within


def test_close_but_not_identical_is_not_bitwise():
    """allclose with its default tolerances accepts this pair; bitwise must not."""
    old = torch.tensor([1.0, 2.0])
    new = torch.tensor([1.0, 2.0 + 2.0**-22])
    assert torch.allclose(new, old) and not torch.equal(new, old)
    agreement = compare_tensors("x", new, old, atol=0.0, rtol=ULP)
    assert not agreement.bitwise
    assert agreement.within_tolerance


def test_relative_error_is_normwise_against_the_old_tensor():
    agreement = compare_tensors("x", torch.tensor([8.0, 1.0]), torch.tensor([4.0, 1.0]), atol=0.0, rtol=0.25)
    assert (agreement.max_abs_err, agreement.max_rel_err) == (4.0, 1.0)  # scale is max|old| = 4, not max|new| = 8
    assert not agreement.within_tolerance  # 4 > 0.25 * 4


def test_reference_smaller_than_one():
    agreement = compare_tensors("x", torch.tensor([0.75, 0.0]), torch.tensor([0.5, -0.25]), atol=0.0, rtol=0.5)
    assert (agreement.max_abs_err, agreement.max_rel_err) == (0.25, 0.5)
    assert agreement.within_tolerance


def test_integer_tensors_are_compared_as_floats():
    old = torch.tensor([3, 1], dtype=torch.int32)
    new = torch.tensor([1, 1], dtype=torch.int32)
    agreement = compare_tensors("x", new, old, atol=0.0, rtol=1.0)
    assert (agreement.max_abs_err, agreement.max_rel_err) == (2.0, 2.0 / 3.0)
    assert agreement.within_tolerance


def test_zero_reference():
    zeros = torch.zeros(3)
    assert compare_tensors("x", zeros, zeros.clone(), atol=0.0, rtol=ULP).max_rel_err == 0.0
    off = compare_tensors("x", zeros + 0.5, zeros, atol=0.5, rtol=ULP)
    assert off.max_rel_err == float("inf")
    assert off.within_tolerance  # atol alone admits it


def test_empty_tensors_agree():
    empty = torch.empty(0, 3)
    assert compare_tensors("x", empty, empty.clone(), atol=0.0, rtol=0.0) == Agreement("x", True, 0.0, 0.0, True)


def test_shape_mismatch_is_never_equivalent():
    agreement = compare_tensors("x", torch.zeros(2, 3), torch.zeros(3, 2), atol=1e9, rtol=1e9)
    assert agreement == Agreement("x", False, float("inf"), float("inf"), False)


def part(what: str, *, bitwise: bool = True, within: bool = True, rel: float = 0.0) -> Agreement:
    return Agreement(what, bitwise, rel * 2.0, rel, within)


def report(**agreements: Agreement) -> EquivalenceReport:
    parts = {name: part(name) for name in ("frame0", "image_latent", "latents")} | agreements
    return EquivalenceReport(**parts, atol=0.0, rtol=ULP)


@pytest.mark.parametrize("which", ["frame0", "image_latent", "latents"])
def test_every_part_must_agree(which):
    assert report().bitwise and report().equivalent
    close = report(**{which: part(which, bitwise=False, rel=0.001)})
    assert not close.bitwise and close.equivalent
    off = report(**{which: part(which, bitwise=False, within=False, rel=0.5)})
    assert not off.bitwise and not off.equivalent


def test_report_to_dict():
    close = report(latents=part("latents", bitwise=False, rel=0.001))
    data = close.to_dict()
    assert data["bitwise"] is False and data["equivalent"] is True
    assert data["latents"] == {
        "what": "latents", "bitwise": False, "max_abs_err": 0.002, "max_rel_err": 0.001, "within_tolerance": True,
    }
    assert (data["atol"], data["rtol"]) == (0.0, ULP)
    assert set(data) == {"frame0", "image_latent", "latents", "atol", "rtol", "bitwise", "equivalent"}


def test_report_text_names_the_worst_part():
    assert str(report()) == (
        "EQUIVALENT (bitwise): latent frame 0, image_latent and the whole prepared latent are identical"
    )
    close = report(
        frame0=part("frame0", bitwise=False, rel=0.002),
        latents=part("latents", bitwise=False, rel=0.001),
    )
    assert str(close) == (
        "EQUIVALENT (within tolerance): worst is frame0, max abs err 0.004, max rel err 0.002 "
        "(tolerance atol=0, rtol=0.0078125)"
    )
    off = report(
        frame0=part("frame0", bitwise=False, rel=0.001),
        image_latent=part("image_latent", bitwise=False, within=False, rel=0.5),
    )
    assert str(off).startswith("NOT EQUIVALENT: worst is image_latent, max abs err 1, max rel err 0.5 ")


class StubStage:
    """Stands in for Cosmos3LatentPreparationStage: each strategy's latents are given, not encoded."""

    made: ClassVar[list[tuple]] = []
    latents: ClassVar[dict[str, torch.Tensor]] = {}

    def __init__(self, vae, *, encode_strategy: str, dtype: torch.dtype) -> None:
        StubStage.made.append((vae, encode_strategy, dtype))
        self.strategy = encode_strategy

    def __call__(self, req):
        req.latents = StubStage.latents[self.strategy]
        req.image_latent = req.latents[:, :, :1]
        return req


@pytest.fixture
def stub_stage(monkeypatch):
    StubStage.made = []
    monkeypatch.setattr(equivalence, "Cosmos3LatentPreparationStage", StubStage)
    return StubStage


def latents_pair(frame0_err: float = 0.0, later_err: float = 0.0) -> dict[str, torch.Tensor]:
    """expand latents of ones over 3 latent frames; single_frame off by the given errors."""
    old = torch.ones(1, 4, 3, 2, 2)
    new = old.clone()
    new[0, 0, 0, 0, 0] += frame0_err
    new[0, 1, 2, 1, 1] += later_err
    return {"single_frame": new, "expand": old}


def test_check_builds_both_strategies_from_the_same_request(stub_stage):
    stub_stage.latents = latents_pair()
    req = tiny.i2v_request(num_frames=9)
    result = check_encode_equivalence("vae", req, dtype=torch.float16)
    assert stub_stage.made == [("vae", "single_frame", torch.float16), ("vae", "expand", torch.float16)]
    assert req.latents is None  # each strategy got its own copy of the request
    assert result.bitwise
    assert (result.frame0.what, result.image_latent.what, result.latents.what) == (
        "latent frame 0", "image_latent", "prepared latents",
    )


def test_default_tolerance_admits_one_ulp_and_not_two(stub_stage):
    stub_stage.latents = latents_pair(frame0_err=ULP)
    one_ulp = check_encode_equivalence(None, tiny.i2v_request(), dtype=torch.float32)
    assert (one_ulp.atol, one_ulp.rtol) == (DEFAULT_ATOL, DEFAULT_RTOL)
    assert one_ulp.equivalent and not one_ulp.bitwise
    stub_stage.latents = latents_pair(frame0_err=2 * ULP)
    assert not check_encode_equivalence(None, tiny.i2v_request(), dtype=torch.float32).equivalent


def test_frame0_is_latent_frame_0_only(stub_stage):
    stub_stage.latents = latents_pair(later_err=1.0)
    result = check_encode_equivalence(None, tiny.i2v_request(), dtype=torch.float32)
    assert result.frame0.bitwise and result.image_latent.bitwise
    assert not result.latents.within_tolerance and result.latents.max_abs_err == 1.0
    stub_stage.latents = latents_pair(frame0_err=1.0)
    result = check_encode_equivalence(None, tiny.i2v_request(), dtype=torch.float32)
    assert not result.frame0.within_tolerance and not result.image_latent.within_tolerance


def test_explicit_tolerance_reaches_every_comparison(stub_stage):
    stub_stage.latents = latents_pair(frame0_err=0.5)
    loose = check_encode_equivalence(None, tiny.i2v_request(), dtype=torch.float32, atol=0.25, rtol=0.25)
    assert (loose.atol, loose.rtol) == (0.25, 0.25)
    assert loose.frame0.within_tolerance and loose.image_latent.within_tolerance and loose.latents.within_tolerance
    tight = check_encode_equivalence(None, tiny.i2v_request(), dtype=torch.float32, atol=0.25, rtol=0.0)
    assert not (tight.frame0.within_tolerance or tight.image_latent.within_tolerance or tight.latents.within_tolerance)


# ---- the fp32-oracle check: its error measures and its negative controls ----------------------------



@pytest.mark.parametrize("new, old, expected", [
    (torch.tensor([0.6]), torch.tensor([0.5]), 0.2),  # a scale below 1 divides too
    (torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0]), float("inf")),
    (torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), 0.0),
    (torch.tensor([1.0]), torch.tensor([1.0, 1.0]), float("inf")),  # shapes differ
])
def test_rms_rel_err(new, old, expected):
    assert rms_rel_err(new, old) == pytest.approx(expected)


def test_the_oracle_is_an_fp32_copy_without_gradients():
    vae = tiny.vae()
    oracle = fp32_oracle(vae)
    assert oracle is not vae and oracle.dtype == torch.float32 and not oracle.training
    assert not any(p.requires_grad for p in oracle.parameters())


def test_the_oracle_must_be_fp32():
    bf16 = fp32_oracle(tiny.vae()).to(torch.bfloat16)
    with pytest.raises(InputError) as err:
        check_against_oracle(bf16, tiny.vae(), tiny.i2v_request(), "single_frame")
    assert str(err.value) == "vae_fp32: must be float32 (the oracle) (got 'torch.bfloat16')"


def test_the_reference_strategy_is_the_one_asked_for():
    """single_frame IS the oracle's path (error 0); first_frame_2d as the reference has its own error."""
    vae = tiny.vae()
    report = check_against_oracle(fp32_oracle(vae), vae, tiny.i2v_request(), "single_frame",
                                  reference_strategy="first_frame_2d", dtype=torch.float32)
    assert report.max_abs_err == 0 and report.bitwise and report.equivalent
    assert report.reference_max_abs_err > 0 and report.reference_max_rel_err > 0 and report.reference_rms_rel_err > 0
    assert report.to_dict()["limit_rms_rel_err"] == report.limit_rms_rel_err
    assert report.to_dict()["limit_max_rel_err"] == report.limit_max_rel_err


class _Disturbed(equivalence.Cosmos3LatentPreparationStage):
    """Negative control: the stage under test changes the noise frames or the velocity mask."""

    target: ClassVar[str] = "single_frame"
    what: ClassVar[str] = "noise"

    def __call__(self, req):
        out = super().__call__(req)
        if self.encode_strategy == self.target:
            if self.what == "noise":
                out.latents = out.latents.clone()
                out.latents[:, :, 1:] += 1
            else:
                out.velocity_mask = out.velocity_mask.clone() * 0.5
        return out


@pytest.mark.parametrize("what", ["noise", "mask"])
def test_a_strategy_that_disturbs_the_noise_frames_is_not_equivalent(monkeypatch, what):
    monkeypatch.setattr(_Disturbed, "what", what)
    monkeypatch.setattr(equivalence, "Cosmos3LatentPreparationStage", _Disturbed)
    vae = tiny.vae()
    # The image latent is the oracle's bit for bit (single_frame in fp32); only the noise differs.
    report = check_against_oracle(fp32_oracle(vae), vae, tiny.i2v_request(), "single_frame",
                                  reference_strategy="expand", dtype=torch.float32)
    assert report.max_abs_err == 0 and not report.noise_identical
    assert not report.equivalent and not report.bitwise
    assert str(report).endswith("; noise frames DIFFER from expand's") and str(report).startswith("NOT EQUIVALENT")


def test_an_equivalent_report_says_nothing_of_the_noise():
    vae = tiny.vae()
    report = check_against_oracle(fp32_oracle(vae), vae, tiny.i2v_request(), "single_frame", dtype=torch.float32)
    assert str(report) == (
        "EQUIVALENT: single_frame against fp32 oracle (single_frame) in float32: rms rel err 0 (limit 1e-05), "
        "max rel err 0 (limit 1e-05); single_frame's: 0 / 0")
    assert isinstance(report, OracleReport)


def test_max_errors_refuses_tensors_of_unlike_shapes():
    from cosmos3.equivalence import max_errors

    with pytest.raises(ValueError) as err:
        max_errors(torch.zeros(2, 3), torch.zeros(3))
    assert str(err.value) == "max_errors needs tensors of one shape, not (2, 3) and (3,)"
    assert max_errors(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 4.0])) == (1.0, 0.25, 4.0)
