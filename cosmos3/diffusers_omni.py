"""diffusers' Cosmos3OmniPipeline as a second implementation under test, called through its own methods.

diffusers 0.42.1 prepares an image-to-video request the way sglang did before PR #27084
(`Cosmos3OmniPipeline.prepare_latents`, pipelines/cosmos/pipeline_cosmos3_omni.py): a zero video of
`num_frames` frames on the device, the image written into frame 0 and repeated into every other frame,
the whole video VAE-encoded, and only latent frame 0 kept (`vision_condition_mask[0] = 1`). This module
builds that pipeline from local parts (nothing is downloaded: a tokenizer built here, random or local
weights, the safety checker off) and runs its methods unchanged. Its one change is a named patch of
one call, `single_frame_encode`: `_encode_video` is handed pixel frame 0 alone and its latent placed in
latent frame 0, with zeros (no tiling) in the frames the condition mask discards. The rest of
diffusers' logic runs as shipped, so the two ways are compared on diffusers' own outputs.

Why the patch keeps the output: the Wan VAE's encoder is temporally causal (pixel frame 0 is encoded
alone before any 4-frame chunk), so the latent of frame 0 is the same whether later frames follow;
and `prepare_latents` mixes `mask * x0 + (1 - mask) * noise` with mask 0 on every other latent frame,
so what `x0` holds there never reaches the result (zeros, finite, times 0).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cosmos3.errors import InputError
from cosmos3.timing import synchronize

if TYPE_CHECKING:  # cosmos3.equivalence imports the stages, which import cosmos3.components, which imports this
    from cosmos3.equivalence import Agreement

# cosmos3.equivalence's tolerance (one bf16 ulp, normwise), repeated here for the import order above;
# tests/measure/test_diffusers_workloads.py holds them equal.
DEFAULT_ATOL, DEFAULT_RTOL = 0.0, 2.0**-7

# The ways the pipeline's I2V latents are prepared: as diffusers ships it, and with the one-frame encode.
# "wrong_frame" is the negative control of the equivalence check (latent frame 1 of a 5-frame encode put
# in frame 0: an off-by-one a patch could make), never a benchmark case.
SHIPPED, SINGLE_FRAME, WRONG_FRAME = "shipped", "single_frame", "wrong_frame"
ENCODES = (SHIPPED, SINGLE_FRAME, WRONG_FRAME)

# A prompt of a typical length for a video model (about 80 words); the chat template, the system prompt
# and diffusers' duration and resolution templates are added around it, as they are for any request.
PROMPT = (
    "A slow cinematic dolly shot through a sunlit greenhouse in the early morning. Rows of tomato plants "
    "and hanging ferns glisten with dew while a gardener in a blue apron walks between the tables, pausing "
    "to inspect the leaves. Soft golden light streams through the glass roof, casting long shadows across "
    "the wet stone floor. A small robot arm waters seedlings in the background. The camera moves steadily "
    "forward at eye level, with a shallow depth of field and gentle film grain."
)
SPECIAL_TOKENS = ("<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|endoftext|>")
# The chat layout of Qwen-style tokenizers, which Cosmos3's text pathway was trained on; only its shape
# (role markers around each turn, then the assistant's turn opened) matters to the token count.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant{% endif %}")
_WORDS = re.compile(r"\w+|[^\w\s]")


def local_tokenizer(extra_text: str = "") -> Any:
    """A word-level fast tokenizer built here, whose vocabulary covers every word the pipeline's prompts use
    (the prompt, diffusers' system prompts and templates, `extra_text`): no download, no unknown token.

    Token ids stay below the vocabulary size, so any text embedding of at least that many rows takes them.
    """
    from diffusers.pipelines.cosmos import pipeline_cosmos3_omni as omni
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    templates = "The video is not 0.0 seconds long and is of 24 FPS. This image is not of 720x1280 resolution."
    corpus = (f"{PROMPT} {omni._SYSTEM_PROMPT_VIDEO} {omni._SYSTEM_PROMPT_IMAGE} system user assistant {templates} "
              f"0 1 2 3 4 5 6 7 8 9 x {extra_text}")
    words = sorted(set(_WORDS.findall(corpus)) - set(SPECIAL_TOKENS))
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                  pre_tokenizers.Digits(individual_digits=True)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>", "<|vision_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_pipeline(vae: Any, transformer: Any = None, scheduler: Any = None, tokenizer: Any = None) -> Any:
    """diffusers' Cosmos3OmniPipeline from these parts, the safety checker off (it needs cosmos_guardrail and
    its weights, and checks decoded frames only, after every stage this suite times).

    `transformer` may be None for latent preparation alone: prepare_latents reads it only for sound and
    action conditioning, which an image-to-video request has neither of.
    """
    from diffusers import UniPCMultistepScheduler
    from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import Cosmos3OmniPipeline

    if scheduler is None:
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            num_train_timesteps=1000, flow_shift=10.0)
    return Cosmos3OmniPipeline(transformer=transformer, text_tokenizer=tokenizer or local_tokenizer(), vae=vae,
                               scheduler=scheduler, enable_safety_checker=False)


def latent_frames(num_frames: int, temporal_factor: int) -> int:
    return (num_frames - 1) // temporal_factor + 1


@contextlib.contextmanager
def encode_patch(pipe: Any, encode: str) -> Iterator[None]:
    """`pipe._encode_video` as `encode` asks, for the block: SHIPPED leaves it alone; SINGLE_FRAME hands
    it pixel frame 0 alone and puts that latent in latent frame 0, zeros in the others; WRONG_FRAME puts
    latent frame 1 of pixel frames 0-4 there instead (the check's negative control)."""
    if encode not in ENCODES:
        raise InputError("encode", f"must be one of {list(ENCODES)}", encode)
    if encode == SHIPPED:
        yield
        return
    shipped = pipe._encode_video  # the bound method of the class, as diffusers defines it
    temporal = int(pipe.vae.config.scale_factor_temporal)

    def encode_one_frame(video: torch.Tensor) -> torch.Tensor:
        if encode == SINGLE_FRAME:
            first = shipped(video[:, :, :1])
        else:
            first = shipped(video[:, :, : temporal + 1])[:, :, 1:2]
        out = first.new_zeros((*first.shape[:2], latent_frames(video.shape[2], temporal), *first.shape[3:]))
        out[:, :, :1] = first
        return out

    pipe._encode_video = encode_one_frame  # an instance attribute: the class's method is untouched
    try:
        yield
    finally:
        del pipe._encode_video


@dataclass(frozen=True)
class PreparedLatents:
    """What prepare_latents returns for an image-to-video request, by name."""

    latents: torch.Tensor  # [1, z, T_lat, H/16, W/16]: mask * x0 + (1 - mask) * noise
    condition_mask: torch.Tensor  # vision_condition_mask, [T_lat, 1, 1]: 1 on latent frame 0


def prepare_i2v_latents(pipe: Any, image: Any, *, num_frames: int, height: int, width: int, seed: int,
                        device: torch.device, dtype: torch.dtype, encode: str = SHIPPED) -> PreparedLatents:
    """diffusers' own `prepare_latents` for one image-to-video request (its preprocessing of `image`
    included), with the encode `encode` names."""
    generator = torch.Generator(device=device).manual_seed(seed)
    with encode_patch(pipe, encode), torch.no_grad():
        out = pipe.prepare_latents(image=image, num_frames=num_frames, height=height, width=width,
                                   generator=generator, device=device, dtype=dtype)
    latents, condition_mask = out[0], out[5]
    return PreparedLatents(latents, condition_mask)


@dataclass(frozen=True)
class OmniEquivalence:
    """One encode's prepare_latents against the shipped one on the same request: bitwise, else within the
    tolerance of this package's own check (cosmos3.equivalence: one bf16 ulp, normwise)."""

    frame0: Agreement  # latent frame 0 of the returned latents: the conditioning frame's latent
    latents: Agreement  # the whole returned latent (the noise of the other frames included)
    condition_mask: Agreement  # vision_condition_mask
    atol: float
    rtol: float

    @property
    def compared(self) -> tuple[Agreement, ...]:
        return (self.frame0, self.latents, self.condition_mask)

    @property
    def bitwise(self) -> bool:
        return all(a.bitwise for a in self.compared)

    @property
    def equivalent(self) -> bool:
        return all(a.within_tolerance for a in self.compared)


def check_equivalence(pipe: Any, image: Any, *, num_frames: int, height: int, width: int, device: torch.device,
                      dtype: torch.dtype, encode: str = SINGLE_FRAME, seed: int = 0, atol: float = DEFAULT_ATOL,
                      rtol: float = DEFAULT_RTOL) -> OmniEquivalence:
    """prepare_latents with `encode` against SHIPPED: the same image, size and seed."""
    from cosmos3.equivalence import compare_tensors

    common = {"num_frames": num_frames, "height": height, "width": width, "seed": seed, "device": device,
              "dtype": dtype}
    new = prepare_i2v_latents(pipe, image, encode=encode, **common)
    old = prepare_i2v_latents(pipe, image, encode=SHIPPED, **common)
    return OmniEquivalence(
        frame0=compare_tensors("latent frame 0", new.latents[:, :, 0], old.latents[:, :, 0], atol=atol, rtol=rtol),
        latents=compare_tensors("prepared latents", new.latents, old.latents, atol=atol, rtol=rtol),
        condition_mask=compare_tensors("condition mask", new.condition_mask, old.condition_mask, atol=0.0, rtol=0.0),
        atol=atol,
        rtol=rtol,
    )


# The stages of one `__call__`, in the order it runs them, as `timed_call` splits it:
# - prompt: tokenising the prompt (chat template, system prompt, duration and resolution templates) and
#   packing the text segments of both guidance passes;
# - latent_preparation: prepare_latents (the image's preprocessing, the video, the encode, the noise, the mix);
# - denoising: the static vision segments, the timesteps and the denoise loop;
# - decoding: the VAE decode and diffusers' postprocessing into frames.
CALL_STAGES = ("prompt", "latent_preparation", "denoising", "decoding")


@dataclass(frozen=True)
class TimedCall:
    """One `__call__`: what it returned, and its device-synchronised time per stage (CALL_STAGES) and in all."""

    output: Any
    stage_ms: dict[str, float]
    total_ms: float


def timed_call(pipe: Any, *, device: torch.device, encode: str = SHIPPED, **call: Any) -> TimedCall:
    """`pipe(**call)`, diffusers' own `__call__` unchanged, split into CALL_STAGES at three calls it makes:
    the start and the end of `prepare_latents`, and the start of `vae.decode`. Each boundary synchronises
    the device before it reads the clock, so a stage's GPU work is charged to it and not to the next one.

    The two are wrapped as instance attributes for the call only (as `encode_patch` does), so the
    pipeline's and the VAE's classes are untouched. If diffusers stops calling either, the split cannot
    be made and this says so rather than report a stage as free.
    """
    device = torch.device(device)
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        if name in marks:
            raise RuntimeError(f"diffusers' __call__ entered {name} twice; the split of one request cannot be made")
        synchronize(device)
        marks[name] = time.perf_counter()

    prepare, decode = pipe.prepare_latents, pipe.vae.decode

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:
        mark("latent_preparation")
        out = prepare(*args, **kwargs)
        mark("denoising")
        return out

    def timed_decode(*args: Any, **kwargs: Any) -> Any:
        mark("decoding")
        return decode(*args, **kwargs)

    pipe.prepare_latents, pipe.vae.decode = timed_prepare, timed_decode
    try:
        with encode_patch(pipe, encode), torch.no_grad():
            mark("prompt")
            output = pipe(**call)
            mark("end")
    finally:
        del pipe.prepare_latents
        del pipe.vae.decode
    missing = [stage for stage in CALL_STAGES if stage not in marks]
    if missing:
        raise RuntimeError(f"diffusers' __call__ never reached {', '.join(missing)} (prepare_latents and vae.decode "
                           "are where it is split): the split of its stages cannot be made")
    bounds = [marks[stage] for stage in CALL_STAGES] + [marks["end"]]
    stage_ms = {stage: (end - start) * 1e3 for stage, start, end in zip(CALL_STAGES, bounds, bounds[1:], strict=False)}
    return TimedCall(output, stage_ms, (marks["end"] - marks["prompt"]) * 1e3)
