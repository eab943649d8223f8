"""first_frame_2d: the Wan VAE encoder run as a 2D network on one frame, on the VAE's own weights (no copy).

Why it is exact. diffusers' `_encode` runs pixel frame 0 alone (the first chunk) with an empty
causal cache. There, every causal 3x3x3 conv pads time with zeros in front, so of its temporal
taps only the last one sees the frame; the temporal downsamples (`downsample3d`) skip their
time conv on the first chunk. So on one frame each `WanCausalConv3d` is a conv2d with the last
temporal tap, a view of the 3D kernel, with the spatial padding the 3D conv uses.

How each diffusers module maps (activations stay [B, C, 1, H, W]; only the convs drop the time dim):

- `WanCausalConv3d` (3x3x3 or 1x1x1): `F.conv2d(x[:, :, 0], weight[:, :, -1], bias, stride[1:], (ph, pw))`.
- `WanRMS_norm`, the SiLU, `WanAttentionBlock` (already per frame), the spatial `resample` of
  `WanResample` (ZeroPad2d + stride-2 Conv2d) and `AvgDown3D` (it pads a lone frame with zero
  frames in front, exactly as on the first chunk): the diffusers modules themselves, on T = 1.
- `WanResidualBlock`, `WanResidualDownBlock`, `WanMidBlock`, `WanEncoder3d`: their forward, mirrored
  step by step with the convs above (dropout is the identity in eval mode).
- `WanResample` "downsample3d": the first-chunk branch, i.e. the spatial resample only.
- `patchify` (diffusers' function), `quant_conv` (a 1x1x1 conv), the mode of the latent distribution
  (the first z channels of the moments) and the latent normalisation of `cosmos3.vae`.

`check_supported` walks the same tree and raises `UnsupportedEncoder`, listing every mismatch,
when a module, a count or a config field is not what this mapping was written for; so a future
diffusers that changes the encoder fails loudly here instead of computing something else.
"""

from __future__ import annotations

import time
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders import autoencoder_kl_wan as wan
from torch import nn

from cosmos3.errors import InputError
from cosmos3.vae import _latent_stats, encode_latents

# The temporal tap that sees frame 0 of a causal conv (time padded only in front, kT - 1 frames).
_LAST_TAP = -1

Mode = Literal["eager", "cuda_graph", "compile"]
FIRST_FRAME_MODES: tuple[str, ...] = get_args(Mode)
CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

# Eager rounds on a side stream before a CUDA graph is captured (cuDNN / cuBLAS pick their kernels there).
_GRAPH_WARMUP_ROUNDS = 3

# The build-time self-check: the 2D path against the VAE's own 3D encode of a small seeded image, in the VAE's
# dtype, in the 2-norm (||2D - 3D|| / ||3D||). Measured on the CPU: ~1e-7 in fp32, 0.005-0.007 in bf16; the
# first-tap control is off by ~0.9. The strict rules live in cosmos3.equivalence.check_against_oracle; this only
# refuses a VAE whose 2D encode is plainly wrong.
_SELF_CHECK_SIZE = (64, 64)
_SELF_CHECK_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8}
_SELF_CHECK_RTOL_LOW_PRECISION = 5e-2

_SUPPORTED_PATCH_SIZES = (None, 1, 2)


class UnsupportedEncoder(RuntimeError):
    """The VAE's encoder is not the structure first_frame_2d maps; `mismatches` says where, one per line."""

    def __init__(self, mismatches: list[str]) -> None:
        self.mismatches = list(mismatches)
        lines = "\n  ".join(self.mismatches)
        super().__init__(
            f"first_frame_2d cannot run this VAE ({len(self.mismatches)} mismatch(es) with the diffusers "
            f"AutoencoderKLWan encoder it maps):\n  {lines}"
        )


# ---------------------------------------------------------------------------------------------------------------
# The structure guard: one walk over the encoder in the order the forward pass takes.


class _Walk:
    """Collects mismatches and the modules the 2D forward will use (or knowingly skip)."""

    def __init__(self, vae: nn.Module) -> None:
        self.names = {id(m): name or "<vae>" for name, m in vae.named_modules()}
        self.mismatches: list[str] = []
        self.visited: set[int] = set()

    def name(self, module: object) -> str:
        return self.names.get(id(module), repr(type(module).__name__))

    def expect(self, module: object, cls: type) -> bool:
        """Exact type (a subclass may override forward); marks it visited."""
        if type(module) is not cls:
            self.mismatches.append(
                f"{self.name(module)}: expected {cls.__name__}, got {type(module).__module__}.{type(module).__name__}"
            )
            return False
        self.visited.add(id(module))
        return True

    def fail(self, module: object, what: str) -> None:
        self.mismatches.append(f"{self.name(module)}: {what}")

    def causal_conv(self, conv: object, kernel: tuple[int, int, int] | None = None) -> None:
        if not self.expect(conv, wan.WanCausalConv3d):
            return
        k_t = conv.kernel_size[0]
        if kernel is not None and conv.kernel_size != kernel:
            self.fail(conv, f"kernel {conv.kernel_size}, expected {kernel}")
        pad = getattr(conv, "_padding", None)
        if not (isinstance(pad, tuple) and len(pad) == 6):
            self.fail(conv, f"causal padding {pad!r} is not the 6-tuple (w, w, h, h, 2t, 0)")
            return
        if pad[4] != k_t - 1 or pad[5] != 0:
            # Only then is the last tap the one that sees frame 0 (and the others see zero padding).
            self.fail(conv, f"time padding {pad[4:]} is not causal (kT - 1, 0) for kT={k_t}")
        if pad[0] != pad[1] or pad[2] != pad[3]:
            self.fail(conv, f"asymmetric spatial padding {pad[:4]}")
        if tuple(conv.padding) != (0, 0, 0) or conv.padding_mode != "zeros":
            self.fail(conv, f"padding {conv.padding} / mode {conv.padding_mode!r}, expected (0, 0, 0) / 'zeros'")
        if tuple(conv.dilation) != (1, 1, 1) or conv.groups != 1:
            self.fail(conv, f"dilation {conv.dilation} / groups {conv.groups}, expected (1, 1, 1) / 1")
        if conv.stride[0] != 1:
            self.fail(conv, f"temporal stride {conv.stride[0]}, expected 1")

    def rms_norm(self, norm: object) -> None:
        if self.expect(norm, wan.WanRMS_norm) and not norm.channel_first:
            self.fail(norm, "channel_first=False")

    def silu(self, act: object) -> None:
        self.expect(act, nn.SiLU)

    def residual_block(self, block: object) -> None:
        if not self.expect(block, wan.WanResidualBlock):
            return
        self.silu(block.nonlinearity)
        self.rms_norm(block.norm1)
        self.causal_conv(block.conv1, (3, 3, 3))
        self.rms_norm(block.norm2)
        self.causal_conv(block.conv2, (3, 3, 3))
        if self.expect(block.dropout, nn.Dropout) and block.dropout.p != 0 and block.dropout.training:
            self.fail(block.dropout, f"dropout p={block.dropout.p} in training mode (the 2D path has none)")
        if isinstance(block.conv_shortcut, nn.Identity):
            self.expect(block.conv_shortcut, nn.Identity)
        else:
            self.causal_conv(block.conv_shortcut, (1, 1, 1))

    def downsample(self, resample: object) -> None:
        if not self.expect(resample, wan.WanResample):
            return
        if resample.mode not in ("downsample2d", "downsample3d"):
            self.fail(resample, f"mode {resample.mode!r}, expected downsample2d or downsample3d")
            return
        seq = resample.resample
        if not (self.expect(seq, nn.Sequential) and len(seq) == 2):
            self.fail(seq, "expected Sequential(ZeroPad2d, Conv2d)")
            return
        self.expect(seq[0], nn.ZeroPad2d)
        self.expect(seq[1], nn.Conv2d)
        # "downsample3d"'s time conv is skipped on the first chunk: diffusers caches the frame and applies none.
        time_conv = getattr(resample, "time_conv", None) if resample.mode == "downsample3d" else None
        if time_conv is not None and self.expect(time_conv, wan.WanCausalConv3d) and time_conv.kernel_size != (3, 1, 1):
            self.fail(time_conv, f"kernel {time_conv.kernel_size}, expected (3, 1, 1)")

    def residual_down_block(self, block: object) -> None:
        if not self.expect(block, wan.WanResidualDownBlock):
            return
        self.expect(block.avg_shortcut, wan.AvgDown3D)
        self.expect(block.resnets, nn.ModuleList)
        for resnet in block.resnets:
            self.residual_block(resnet)
        if block.downsampler is not None:
            self.downsample(block.downsampler)

    def mid_block(self, mid: object) -> None:
        if not self.expect(mid, wan.WanMidBlock):
            return
        self.expect(mid.resnets, nn.ModuleList)
        self.expect(mid.attentions, nn.ModuleList)
        if len(mid.resnets) != len(mid.attentions) + 1:
            self.fail(mid, f"{len(mid.resnets)} resnets for {len(mid.attentions)} attentions, expected one more")
        for resnet in mid.resnets:
            self.residual_block(resnet)
        for attn in mid.attentions:
            if self.expect(attn, wan.WanAttentionBlock):
                self.rms_norm(attn.norm)
                self.expect(attn.to_qkv, nn.Conv2d)
                self.expect(attn.proj, nn.Conv2d)

    def encoder(self, enc: object, residual: bool) -> None:
        if not self.expect(enc, wan.WanEncoder3d):
            return
        self.causal_conv(enc.conv_in, (3, 3, 3))
        self.expect(enc.down_blocks, nn.ModuleList)
        for layer in enc.down_blocks:
            if residual:
                self.residual_down_block(layer)
            elif isinstance(layer, wan.WanResample):
                self.downsample(layer)
            else:
                self.residual_block(layer)
        self.mid_block(enc.mid_block)
        self.rms_norm(enc.norm_out)
        self.silu(enc.nonlinearity)
        self.causal_conv(enc.conv_out, (3, 3, 3))


def _structure_mismatches(vae: nn.Module) -> list[str]:
    if type(vae) is not AutoencoderKLWan:
        # A subclass may override _encode (tests/tiny.py's look-ahead VAE does): its 3D path is not ours.
        return [f"<vae>: expected diffusers AutoencoderKLWan, got {type(vae).__module__}.{type(vae).__name__}"]
    walk = _Walk(vae)
    cfg = vae.config
    if cfg.patch_size not in _SUPPORTED_PATCH_SIZES:
        walk.fail(vae, f"config patch_size {cfg.patch_size!r}, expected one of {_SUPPORTED_PATCH_SIZES}")
    patch = cfg.patch_size or 1
    if cfg.in_channels % (patch * patch):
        walk.fail(vae, f"config in_channels {cfg.in_channels} is not a multiple of patch_size**2")
    walk.encoder(vae.encoder, bool(cfg.is_residual))
    walk.causal_conv(vae.quant_conv, (1, 1, 1))
    enc = getattr(vae, "encoder", None)
    if isinstance(enc, wan.WanEncoder3d):
        if enc.z_dim != 2 * cfg.z_dim:
            walk.fail(enc, f"z_dim {enc.z_dim}, expected 2 * config z_dim = {2 * cfg.z_dim} (mean and logvar)")
        for name, module in enc.named_modules(prefix="encoder"):
            if id(module) not in walk.visited:
                walk.mismatches.append(f"{name}: {type(module).__name__} is not part of the mapped encoder")
        n_conv = sum(isinstance(m, wan.WanCausalConv3d) for m in enc.modules())
        cached = getattr(vae, "_cached_conv_counts", {}).get("encoder")
        if cached != n_conv:
            walk.fail(vae, f"encoder causal conv count {n_conv} differs from diffusers' cached count {cached}")
    if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
        counts = f"{len(cfg.latents_mean)}/{len(cfg.latents_std)}"
        walk.fail(vae, f"latents_mean/std have {counts} values, expected z_dim = {cfg.z_dim}")
    return walk.mismatches


def check_supported(vae: nn.Module) -> None:
    """Raise UnsupportedEncoder, listing every mismatch, unless the encoder is the structure mapped here."""
    mismatches = _structure_mismatches(vae)
    if mismatches:
        raise UnsupportedEncoder(mismatches)


# ---------------------------------------------------------------------------------------------------------------
# The 2D forward: mirrors AutoencoderKLWan._encode on its first chunk, module by module.


def first_frame_weight(conv: wan.WanCausalConv3d, tap: int = _LAST_TAP) -> torch.Tensor:
    """The conv2d kernel [O, I, kH, kW] of a causal conv3d on frame 0: a view of its weight, never a copy."""
    return conv.weight[:, :, tap]


class _Net:
    """The encoder as a 2D network on [B, C, 1, H, W] activations (T = 1 is kept so diffusers' own
    per-frame modules run unchanged; only the convs drop it)."""

    def __init__(self, vae: AutoencoderKLWan, *, tap: int = _LAST_TAP, pack_weights: bool = False) -> None:
        self.vae = vae
        self.tap = tap
        # pack_weights makes a contiguous copy of each 2D kernel once: only the speed tool uses it, to
        # measure what the per-call repacking of the strided views costs. The strategy never copies.
        self.packed: dict[int, torch.Tensor] = {}
        if pack_weights:
            for m in vae.modules():
                if isinstance(m, wan.WanCausalConv3d):
                    self.packed[id(m)] = first_frame_weight(m, tap).contiguous()

    def conv(self, conv: wan.WanCausalConv3d, x: torch.Tensor) -> torch.Tensor:
        weight = self.packed.get(id(conv))
        if weight is None:
            weight = first_frame_weight(conv, self.tap)
        pad_w, pad_h = conv._padding[0], conv._padding[2]
        out = F.conv2d(x[:, :, 0], weight, conv.bias, conv.stride[1:], (pad_h, pad_w))
        return out.unsqueeze(2)

    def residual_block(self, block: wan.WanResidualBlock, x: torch.Tensor) -> torch.Tensor:
        h = x if isinstance(block.conv_shortcut, nn.Identity) else self.conv(block.conv_shortcut, x)
        x = block.nonlinearity(block.norm1(x))
        x = self.conv(block.conv1, x)
        x = block.nonlinearity(block.norm2(x))
        x = block.dropout(x)
        x = self.conv(block.conv2, x)
        return x + h

    def downsample(self, resample: wan.WanResample, x: torch.Tensor) -> torch.Tensor:
        # The spatial resample, per frame; "downsample3d" skips its time conv on the first chunk.
        return resample.resample(x[:, :, 0]).unsqueeze(2)

    def residual_down_block(self, block: wan.WanResidualDownBlock, x: torch.Tensor) -> torch.Tensor:
        shortcut = block.avg_shortcut(x)  # diffusers' AvgDown3D: a lone frame is padded with zero frames
        for resnet in block.resnets:
            x = self.residual_block(resnet, x)
        if block.downsampler is not None:
            x = self.downsample(block.downsampler, x)
        return x + shortcut

    def encoder(self, enc: wan.WanEncoder3d, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(enc.conv_in, x)
        for layer in enc.down_blocks:
            if isinstance(layer, wan.WanResidualDownBlock):
                x = self.residual_down_block(layer, x)
            elif isinstance(layer, wan.WanResample):
                x = self.downsample(layer, x)
            else:
                x = self.residual_block(layer, x)
        mid = enc.mid_block
        x = self.residual_block(mid.resnets[0], x)
        for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
            x = attn(x)
            x = self.residual_block(resnet, x)
        x = enc.nonlinearity(enc.norm_out(x))
        return self.conv(enc.conv_out, x)

    def moments(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in the VAE's dtype -> the moments (mean, logvar) [B, 2z, 1, h, w], as `_encode`."""
        x = pixels.unsqueeze(2)
        if self.vae.config.patch_size is not None:
            x = wan.patchify(x, patch_size=self.vae.config.patch_size)
        return self.conv(self.vae.quant_conv, self.encoder(self.vae.encoder, x))

    def latents(self, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z, 1, h, w]: the mode (the mean half of the moments), normalised."""
        mode, _logvar = torch.chunk(self.moments(pixels), 2, dim=1)
        return (mode - mean) / std


def check_pixels(vae: AutoencoderKLWan, pixels: torch.Tensor) -> None:
    """[B, 3, H, W] with H and W multiples of the patch size; no tiling (the 3D path would tile)."""
    channels = vae.config.in_channels // (vae.config.patch_size or 1) ** 2
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != channels:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise InputError("pixels", f"must be a [B, {channels}, H, W] tensor (one frame)", shape)
    patch = vae.config.patch_size or 1
    height, width = pixels.shape[-2:]
    if height % patch or width % patch:
        raise InputError("pixels", f"height and width must be multiples of the patch size {patch}", (height, width))
    if vae.use_tiling and (width > vae.tile_sample_min_width or height > vae.tile_sample_min_height):
        raise InputError("vae.use_tiling", "must be off: the 3D encode would tile this image; first_frame_2d does not")


@torch.no_grad()
def encode_first_frame_2d(vae: AutoencoderKLWan, pixels: torch.Tensor, *, _tap: int = _LAST_TAP) -> torch.Tensor:
    """[1, 3, H, W] pixels in [-1, 1] -> normalised latents [1, z, 1, H/16, W/16], as
    `cosmos3.vae.encode_latents(vae, pixels.unsqueeze(2))` computes them, with 2D convs.

    Checks the structure on every call; `FirstFrameEncoder` checks once and adds the fast modes.
    `_tap` is for the negative control only (0 takes the first temporal tap: wrong on purpose).
    """
    check_supported(vae)
    check_pixels(vae, pixels)
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    mean, std = _latent_stats(vae, pixels)
    return _Net(vae, tap=_tap).latents(pixels, mean, std)


class FirstFrameEncoder:
    """The first_frame_2d strategy object: `encoder(pixels [B, 3, H, W]) -> normalised latents [B, z, 1, h, w]`.

    mode:
      "eager": the 2D network op by op (the default until the GPU measurements say otherwise).
      "cuda_graph": one CUDA graph per input shape, replayed from a static input buffer; the first
        call for a shape pays warm-up plus capture (`setup_ms[shape]`) and the graph's memory pool
        stays allocated. CUDA only.
      "compile": `torch.compile(fullgraph=True, dynamic=False)` of the 2D network with `compile_mode`;
        the first call for a shape pays compilation (`setup_ms[shape]`).
    self_check: at build, compare the eager 2D encode of a small seeded image with the VAE's own 3D
      encode and raise UnsupportedEncoder if it is plainly wrong (structure can match while a changed
      forward computes something else).
    """

    def __init__(
        self,
        vae: AutoencoderKLWan,
        *,
        mode: Mode = "eager",
        compile_mode: CompileMode = "default",
        self_check: bool = True,
        _tap: int = _LAST_TAP,
        _pack_weights: bool = False,
    ) -> None:
        if mode not in FIRST_FRAME_MODES:
            raise InputError("mode", f"must be one of {list(FIRST_FRAME_MODES)}", mode)
        if compile_mode not in COMPILE_MODES:
            raise InputError("compile_mode", f"must be one of {list(COMPILE_MODES)}", compile_mode)
        check_supported(vae)
        if mode == "cuda_graph" and vae.device.type != "cuda":
            raise InputError("mode", "cuda_graph needs the VAE on a CUDA device", str(vae.device))
        self.vae = vae
        self.mode = mode
        self.compile_mode = compile_mode
        self.net = _Net(vae, tap=_tap, pack_weights=_pack_weights)
        # Built once: torch.tensor(list) on a device is a host-to-device copy, not allowed in a graph capture.
        self.latent_mean, self.latent_std = _latent_stats(vae, torch.empty(0, device=vae.device, dtype=vae.dtype))
        # First-call cost per input shape: CUDA-graph warm-up + capture, or compilation (ms).
        self.setup_ms: dict[tuple[int, ...], float] = {}
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._graph_weights_ptr: int | None = None  # where the weights were when the graphs were captured
        self._compiled = None
        if mode == "compile":
            self._compiled = torch.compile(self._latents, mode=compile_mode, fullgraph=True, dynamic=False)
        if self_check:
            self.self_check()

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.latents(pixels, self.latent_mean, self.latent_std)

    @torch.no_grad()
    def self_check(self) -> float:
        """Eager 2D against the VAE's own 3D encode on a seeded image; returns the relative error or raises."""
        height, width = _SELF_CHECK_SIZE
        generator = torch.Generator().manual_seed(0)
        pixels = (torch.rand(1, 3, height, width, generator=generator) * 2 - 1).to(self.vae.device, self.vae.dtype)
        got = self._latents(pixels)
        want = encode_latents(self.vae, pixels.unsqueeze(2))
        rtol = _SELF_CHECK_RTOL.get(self.vae.dtype, _SELF_CHECK_RTOL_LOW_PRECISION)
        rel_err = float((got.double() - want.double()).norm() / want.double().norm())
        if not rel_err <= rtol:  # also refuses NaN
            what = (
                f"self-check: the 2D encode of a {height}x{width} image differs from the VAE's 3D encode by "
                f"{rel_err:.3g} (relative, 2-norm; limit {rtol:g} in {self.vae.dtype})"
            )
            raise UnsupportedEncoder([what])
        return rel_err

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        check_pixels(self.vae, pixels)
        pixels = pixels.to(device=self.vae.device, dtype=self.vae.dtype)
        if self.mode == "cuda_graph":
            return self._replay(pixels)
        if self.mode == "compile":
            shape = tuple(pixels.shape)
            if shape not in self.setup_ms:
                start = time.perf_counter()
                out = self._compiled(pixels).clone()
                _sync(pixels.device)
                self.setup_ms[shape] = (time.perf_counter() - start) * 1e3
                return out
            # reduce-overhead replays a CUDA graph whose output buffer the next call overwrites.
            return self._compiled(pixels).clone()
        return self._latents(pixels)

    def _replay(self, pixels: torch.Tensor) -> torch.Tensor:
        weights_ptr = self.vae.encoder.conv_in.weight.data_ptr()
        if self._graph_weights_ptr not in (None, weights_ptr):
            # A graph reads the addresses it was captured with; a moved or re-cast VAE would be read stale.
            raise RuntimeError("first_frame_2d cuda_graph: the VAE's weights moved since capture; build a new encoder")
        self._graph_weights_ptr = weights_ptr
        shape = tuple(pixels.shape)
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(pixels)
        graph, static_in, static_out = self._graphs[shape]
        static_in.copy_(pixels)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, pixels: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        static_in = pixels.clone()
        side = torch.cuda.Stream(device=pixels.device)
        side.wait_stream(torch.cuda.current_stream(pixels.device))
        with torch.cuda.stream(side):
            for _ in range(_GRAPH_WARMUP_ROUNDS):
                self._latents(static_in)
        torch.cuda.current_stream(pixels.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._latents(static_in)
        torch.cuda.synchronize(pixels.device)
        self.setup_ms[tuple(pixels.shape)] = (time.perf_counter() - start) * 1e3
        return graph, static_in, static_out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
