"""DISCNet: Dynamic Skip Connection Network for UDC restoration, conditioned on the PSF.

Feng, Li, Chen, Li, Loy and Gu, "Removing Diffraction Image Artifacts in Under-Display
Camera via Dynamic Skip Connection Network", CVPR 2021, arXiv 2104.09556;
structure and layer sizes follow the authors' released code (github.com/jnjaby/DISCNet,
``discnet_arch.py`` with ``options/train/DISCNet_train.yml``: nf 32, 3 scales,
multi_scale true, kernel_cond img-psf, psf_nc 5, kpn_sz 5).

Mechanism:
    1. Image encoder: 3 scales (1, 1/2, 1/4) of width nf, 2 nf, 4 nf; each scale is a 3x3 conv
       (stride 2 from the second scale on) + LeakyReLU(0.2) and ``num_blocks`` residual blocks.
    2. Condition encoder: same structure; its input is the kernel code expanded spatially,
       (B, d) -> (B, d, H, W), concatenated with the degraded image: (B, d + 3, H, W).
    3. Filter generator per scale: conv 3x3 + LeakyReLU, ``num_blocks`` residual blocks and a
       1x1 conv giving k * k weights per pixel and per channel, (B, C_i * k * k, H_i, W_i):
       spatially varying, depthwise dynamic filters. Its input is the concatenation of image
       and condition features (``filter_input="image+cond"``) or, as in the released code,
       the condition features alone (``filter_input="cond"``).
    4. Dynamic convolution of each scale's encoder features with these filters (unfold
       gather, replicate padding); the results are the skip connections ("dynamic skips").
    5. Decoder: pixel-shuffle upsampling (conv to 4 C + PixelShuffle(2) + LeakyReLU), added
       to the dynamic skip of that scale, residual blocks; a final 3x3 conv gives the
       residual added to the input.

``released=True`` reproduces the released code's activations exactly: PReLU (one slope,
init 0.2) after the first and the last conv of each filter generator, and LeakyReLU on the
final conv (which squashes negative residuals by 0.2). ``released=False`` (tiny, small)
keeps the filters and the residual linear, as the paper's text describes them. With
``released=True`` and the paper preset, checkpoints of the authors' code load through
:meth:`DISCNet.official_key` (``conv_11.0.weight`` -> ``encoder.stages.0.0.weight``, ...).

Sizes (d = 5; ``num_parameters``):
    tiny:  nf 6,  1 block,  k 3, image+cond ->    85,539 parameters
    small: nf 12, 1 block,  k 3, image+cond ->   338,907 parameters
    paper: nf 32, 2 blocks, k 5, cond, released -> 3,804,617 parameters, exactly the
           released model (the 3.80 M quoted for DISCNet).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.models.base import RESTORERS, Restorer

FILTER_INPUTS = ("image+cond", "cond")


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class ResBlock(nn.Module):
    """conv 3x3 -> LeakyReLU -> conv 3x3, plus identity; convs start at 0.1 x Kaiming (as released).

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = _act()
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def _stage(in_ch: int, out_ch: int, num_blocks: int, stride: int) -> nn.Sequential:
    """conv 3x3 (stride) + LeakyReLU, then residual blocks. (B, in, H, W) -> (B, out, H/s, W/s)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
        _act(),
        *(ResBlock(out_ch) for _ in range(num_blocks)),
    )


class Encoder(nn.Module):
    """Three-scale encoder; returns features at 1, 1/2, 1/4 resolution.

    Shape: (B, C_in, H, W) -> [(B, nf, H, W), (B, 2 nf, H/2, W/2), (B, 4 nf, H/4, W/4)].
    """

    def __init__(self, in_ch: int, widths: list[int], num_blocks: int) -> None:
        super().__init__()
        ins = [in_ch, *widths[:-1]]
        self.stages = nn.ModuleList(
            _stage(i, o, num_blocks, stride=1 if s == 0 else 2) for s, (i, o) in enumerate(zip(ins, widths, strict=True))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class _DynamicConv(torch.autograd.Function):
    """The dynamic convolution of a replicate-padded input, as k * k shifted multiply-adds.

    The unfold form materialises a (B, C, k*k, H, W) patch tensor forward and folds it back in the
    backward pass; this form keeps only the padded input and the filters and accumulates tap by tap
    (fp32, or the input's precision when higher). Forward + backward on a CPU at DISCNet's sizes:
    1.6x (bf16) to 3x (fp32) faster; a DISCNet-small training step 1.3-1.4x
    (bench/bench_dynamic_conv.py). Same arithmetic as ``dynamic_conv_unfold`` up to rounding.

    Shape: padded (B, C, H + k - 1, W + k - 1), filters (B, C * k * k, H, W) -> (B, C, H, W).
    """

    @staticmethod
    def forward(ctx, padded: torch.Tensor, filters: torch.Tensor, k: int) -> torch.Tensor:
        ctx.k, ctx.dtypes = k, (padded.dtype, filters.dtype)
        compute = torch.promote_types(torch.promote_types(padded.dtype, filters.dtype), torch.float32)
        padded = padded.to(compute, memory_format=torch.contiguous_format)
        filters = filters.to(compute, memory_format=torch.contiguous_format)
        b, c, hp, wp = padded.shape
        h, w = hp - k + 1, wp - k + 1
        taps = filters.view(b, c, k * k, h, w)
        out = padded[:, :, :h, :w] * taps[:, :, 0]
        for t in range(1, k * k):
            i, j = divmod(t, k)
            out.addcmul_(padded[:, :, i : i + h, j : j + w], taps[:, :, t])
        ctx.save_for_backward(padded, filters)
        return out.to(torch.promote_types(*ctx.dtypes))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        padded, filters = ctx.saved_tensors
        k = ctx.k
        grad = grad.to(padded.dtype, memory_format=torch.contiguous_format)
        b, c, hp, wp = padded.shape
        h, w = hp - k + 1, wp - k + 1
        taps = filters.view(b, c, k * k, h, w)
        grad_padded = grad_filters = None
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for t in range(k * k):
                i, j = divmod(t, k)
                grad_padded[:, :, i : i + h, j : j + w].addcmul_(grad, taps[:, :, t])
            grad_padded = grad_padded.to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_filters = torch.empty_like(filters)
            grad_taps = grad_filters.view(b, c, k * k, h, w)
            for t in range(k * k):
                i, j = divmod(t, k)
                torch.mul(grad, padded[:, :, i : i + h, j : j + w], out=grad_taps[:, :, t])
            grad_filters = grad_filters.to(ctx.dtypes[1])
        return grad_padded, grad_filters, None


def dynamic_conv(feat: torch.Tensor, filters: torch.Tensor, k: int) -> torch.Tensor:
    """Spatially varying depthwise convolution (per-pixel, per-channel k x k filters).

    out[b, c, y, x] = sum_{i, j} filters[b, c * k * k + i * k + j, y, x]
                                 * feat_pad[b, c, y + i, x + j]
    with replicate padding of (k - 1) / 2 (a correlation, like nn.Conv2d).

    Shape: feat (B, C, H, W), filters (B, C * k * k, H, W) -> (B, C, H, W), in feat's dtype.
    """
    if filters.shape != (feat.shape[0], feat.shape[1] * k * k, *feat.shape[2:]):
        raise ValueError(f"dynamic_conv: filters {tuple(filters.shape)} do not fit features {tuple(feat.shape)} and k {k}")
    p = (k - 1) // 2
    return _DynamicConv.apply(F.pad(feat, (p, p, p, p), mode="replicate"), filters, k)


def dynamic_conv_unfold(feat: torch.Tensor, filters: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`dynamic_conv` written with ``F.unfold`` (the released code's form): the reference that
    tests and the benchmark compare against. Same shapes."""
    b, c, h, w = feat.shape
    p = (k - 1) // 2
    padded = F.pad(feat, (p, p, p, p), mode="replicate")  # (B, C, H + 2p, W + 2p)
    patches = F.unfold(padded, k).view(b, c, k * k, h, w)  # (B, C, k*k, H, W)
    return (patches * filters.view(b, c, k * k, h, w)).sum(dim=2)  # (B, C, H, W)


@RESTORERS.register("discnet")
class DISCNet(Restorer):
    """DISCNet (arXiv 2104.09556): PSF-code-conditioned dynamic skip connections.

    Args:
        channels: image channels C (3).
        cond_dim: kernel code length d (PCA code of the PSF; 5 in the paper).
        nf: width of the first scale; scales have nf, 2 nf, 4 nf channels (paper: 32).
        num_blocks: residual blocks per encoder / decoder / filter-generator stage (paper: 2).
        kernel_size: k of the k x k dynamic filters, odd (released code: 5).
        filter_input: "image+cond" (filter generators see image and condition features) or
            "cond" (condition features only, as in the released code).
        released: the released code's PReLU filter activations and final LeakyReLU.

    Shape:
        x: (B, C, H, W), cond: (B, d) -> (B, C, H, W). Inputs are padded to a multiple of 4.
    """

    multiple: int = 4
    conditional: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"channels": 3, "nf": 6, "num_blocks": 1, "kernel_size": 3, "filter_input": "image+cond"},
        "small": {"channels": 3, "nf": 12, "num_blocks": 1, "kernel_size": 3, "filter_input": "image+cond"},
        "paper": {"channels": 3, "nf": 32, "num_blocks": 2, "kernel_size": 5, "filter_input": "cond", "released": True},
    }

    def __init__(
        self,
        *,
        channels: int = 3,
        cond_dim: int = 5,
        nf: int = 32,
        num_blocks: int = 2,
        kernel_size: int = 5,
        filter_input: str = "cond",
        released: bool = False,
    ) -> None:
        super().__init__()
        if filter_input not in FILTER_INPUTS:
            raise ValueError(f"DISCNet filter_input must be one of {', '.join(FILTER_INPUTS)}, got {filter_input!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DISCNet kernel_size must be odd and >= 1, got {kernel_size}")
        if min(channels, cond_dim, nf) < 1 or num_blocks < 0:
            raise ValueError("DISCNet needs channels, cond_dim, nf >= 1 and num_blocks >= 0")
        self.cond_dim = cond_dim
        self.k = kernel_size
        self.filter_input = filter_input
        widths = [nf, 2 * nf, 4 * nf]
        self.encoder = Encoder(channels, widths, num_blocks)
        self.cond_encoder = Encoder(channels + cond_dim, widths, num_blocks)
        gen_in = 2 if filter_input == "image+cond" else 1
        self.filter_gens = nn.ModuleList(self._filter_gen(gen_in * w, w, num_blocks, released) for w in widths)
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[s + 1], 4 * widths[s], 3, padding=1), nn.PixelShuffle(2), _act())
            for s in (1, 0)
        )
        self.decoders = nn.ModuleList(
            nn.Sequential(*(ResBlock(widths[s]) for _ in range(num_blocks))) for s in (1, 0)
        )
        self.final = nn.Conv2d(nf, channels, 3, padding=1)
        self.final_act = _act() if released else nn.Identity()
        self._identity_filter_init()

    @torch.no_grad()
    def _identity_filter_init(self, scale: float = 0.1) -> None:
        """Start every dynamic filter near the identity: the generators' last 1x1 conv gets ``scale`` x its
        default weights and the centre tap as bias, so the dynamic skips begin as plain skips (plus a small
        image- and code-dependent part) instead of products of random features. Training from scratch then
        converges faster (DISCNet small, 600 steps on the laptop data: +1.4 dB over the input instead of
        +0.8 dB with the default init). Released checkpoints overwrite it."""
        k2 = self.k**2
        for gen in self.filter_gens:
            last = next(m for m in reversed(gen) if isinstance(m, nn.Conv2d))  # (C * k * k) outputs
            last.weight.mul_(scale)
            last.bias.zero_()
            last.bias[k2 // 2 :: k2] = 1.0  # channel c, tap (k // 2, k // 2): index c * k * k + k * k // 2

    def _filter_gen(self, in_ch: int, w: int, num_blocks: int, released: bool) -> nn.Sequential:
        """conv 3x3 + act, residual blocks, 1x1 conv to w * k * k filters (linear, or PReLU as released)."""
        k2 = self.k**2
        if not released:
            return nn.Sequential(_stage(in_ch, w, num_blocks, stride=1), nn.Conv2d(w, w * k2, 1))
        return nn.Sequential(
            nn.Conv2d(in_ch, w, 3, padding=1),
            nn.PReLU(1, init=0.2),
            *(ResBlock(w) for _ in range(num_blocks)),
            nn.Conv2d(w, w * k2, 1),
            nn.PReLU(1, init=0.2),
        )

    #: released name stem -> ours, per scale (kconv_*: condition encoder, dynamic_kernel*: filters)
    _RELEASED = re.compile(r"^(k?)conv_(\d)(\d)\.(.*)$|^upconv_(\d)(\d)\.(.*)$|^dynamic_kernel(\d?)\.(.*)$|^final_conv\.0\.(.*)$")

    @classmethod
    def official_key(cls, key: str) -> str | None:
        """Released DISCNet key (github.com/jnjaby/DISCNet) -> ours; other keys unchanged.

        ``conv_s1.0`` -> ``encoder.stages.{s-1}.0``, ``conv_s2``/``conv_s3`` -> the residual
        blocks ``encoder.stages.{s-1}.2``/``.3`` (``kconv_*``: ``cond_encoder``);
        ``dynamic_kernel1``/``2``/``''`` -> ``filter_gens.0``/``1``/``2``; ``upconv_21`` ->
        ``ups.0``, ``upconv_22``/``23`` -> ``decoders.0.0``/``.1`` (``upconv_1*``: scale 0);
        ``final_conv.0`` -> ``final``.
        """
        key = super().official_key(key) or key
        m = cls._RELEASED.match(key)
        if m is None:
            return key
        if m.group(2):  # (k)conv_sj: j = 1 is conv_block Sequential(conv, act), j = 2, 3 ResBlocks
            enc = "cond_encoder" if m.group(1) else "encoder"
            s, j, rest = int(m.group(2)) - 1, int(m.group(3)), m.group(4)
            return f"{enc}.stages.{s}.0.{rest.removeprefix('0.')}" if j == 1 else f"{enc}.stages.{s}.{j}.{rest}"
        if m.group(5):  # upconv_sj: s = 2 -> decoder 0, s = 1 -> decoder 1
            d, j, rest = 2 - int(m.group(5)), int(m.group(6)), m.group(7)
            return f"ups.{d}.{rest}" if j == 1 else f"decoders.{d}.{j - 2}.{rest}"
        if m.group(9) is not None:  # dynamic_kernel{1,2,}
            return f"filter_gens.{ {'1': 0, '2': 1, '': 2}[m.group(8)] }.{m.group(9)}"
        return f"final.{m.group(10)}"

    def dynamic_filters(
        self, x: torch.Tensor, cond: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Image features and dynamic filters per scale for a padded input.

        Shape: x (B, C, H, W) with H, W multiples of 4, cond (B, d) ->
            features [(B, C_s, H_s, W_s)] and filters [(B, C_s * k * k, H_s, W_s)], s = 0, 1, 2.
        """
        b, _, h, w = x.shape
        code_map = cond[:, :, None, None].expand(b, self.cond_dim, h, w)  # (B, d, H, W)
        cond_feats = self.cond_encoder(torch.cat([code_map, x], dim=1))
        img_feats = self.encoder(x)
        filters = []
        for gen, f_img, f_cond in zip(self.filter_gens, img_feats, cond_feats, strict=True):
            inp = torch.cat([f_img, f_cond], dim=1) if self.filter_input == "image+cond" else f_cond
            filters.append(gen(inp))  # (B, C_s * k * k, H_s, W_s)
        return img_feats, filters

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        assert cond is not None  # checked by Restorer.forward
        feats, filters = self.dynamic_filters(x, cond)
        skips = [dynamic_conv(f, g, self.k) for f, g in zip(feats, filters, strict=True)]
        h = skips[2]  # (B, 4 nf, H/4, W/4): the bottleneck is filtered too
        for up, dec, skip in zip(self.ups, self.decoders, (skips[1], skips[0]), strict=True):
            h = dec(up(h) + skip)  # (B, 2 nf, H/2, W/2), then (B, nf, H, W)
        return self.final_act(self.final(h))  # (B, C, H, W) residual
