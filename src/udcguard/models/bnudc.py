"""BNUDC: two-branched network, high-frequency (diffraction) and low-frequency (colour) branches.

Koh, Lee and Yoon, "BNUDC: A Two-Branched Deep Neural Network for Restoring Images from
Under-Display Cameras", CVPR 2022; structure, layer sizes and submodule names follow the
authors' released code (github.com/JaihyunKoh/BNUDC, ``model/network.py`` ``BNUDCnet`` with
its defaults, as built by ``model/BNUDC.py``: n_feat_high 72, n_feat_low 32, scale_feats 8,
num_blk 6, kernel 3), so our state_dict keys equal the released ones once the
``DataParallel`` prefix ``module.`` is stripped (the released trainer saves
``torch.save(DataParallel(net).state_dict(), "<epoch>_net_bnudc.pth")``: a flat dict).

Mechanism:
    1. High-frequency branch, at half resolution: pixel-unshuffle (B, C, H, W) ->
       (B, 4 C, H/2, W/2), conv + smooth dilated residual block (SDRB: four weight-normalised
       3x3 convs of dilation 1, 2, 4, 8 after learnable shared smoothing filters of size 1, 3,
       7, 15, concatenated, fused by a 3x3 conv, identity, LeakyReLU), 3 "original-resolution"
       blocks of ``num_blk`` SDRBs + conv with a residual, a conv to 8 C channels and
       pixel-shuffle back: per-pixel alpha, beta (B, C, H, W); x_high = alpha * x + beta.
    2. Low-frequency branch, at a quarter resolution and below: bilinear downsampling by 4,
       a normalised (learnable) 3x3 box filter, conv + SDRB, a 3-level encoder-decoder of SDRBs
       (widths n, n + s, n + 2 s at 1/4, 1/8, 1/16 of the input; bilinear resampling + 1x1
       convs; SDRB-refined skips) and a conv to C^2 + C channels, bilinearly upsampled by 4:
       a per-pixel C x C colour matrix gamma and offset delta.
    3. Affine transform connection: output = gamma(x_high) + delta, the low branch's per-pixel
       colour transform applied to the high branch's output (instead of a skip connection).
       The low branch alone would give gamma(x) + delta (``branches()["x_low"]``).

Deviations from the released code (outputs agree to float rounding):
    - weight normalisation is computed inside our conv module (the same ``weight_g`` /
      ``weight_v`` parameters as the deprecated ``torch.nn.utils.weight_norm``);
    - the 15 x 15 shared smoothing filter is applied by FFT (same result, ~6x faster on CPU);
    - the per-image Python loop of ``color_affine`` is a batched einsum;
    - C is a parameter (released: RGB only); the encoder / decoder block count per level
      (``enc_blocks``, released 2) is a parameter for the small presets;
    - the model returns out - x as its residual (the base class adds x back). Unconditional:
      ``cond`` is ignored.

Sizes (``num_parameters``):
    tiny:  high 16, low 8,  scale 4, num_blk 1, enc_blocks 1 ->    97,923 parameters
    small: high 24, low 24, scale 8, num_blk 1, enc_blocks 1 ->   426,883 parameters
    paper: high 72, low 32, scale 8, num_blk 6, enc_blocks 2 -> 4,574,559 parameters, exactly the
           released ``BNUDCnet()`` count (checked against a transcription of the released code).
           No published parameter count was found to compare with.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.models.base import RESTORERS, Restorer


def _conv(in_ch: int, out_ch: int, k: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=bias)


class ShareSepConv(nn.Module):
    """One learnable k x k filter shared by all channels (depthwise), initialised to identity.

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        weight = torch.zeros(1, 1, kernel_size, kernel_size)
        weight[0, 0, kernel_size // 2, kernel_size // 2] = 1.0
        self.weight = nn.Parameter(weight)
        self.k = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k >= FFT_MIN_KERNEL:
            return _fft_correlate(x, self.weight[0, 0])
        c = x.shape[1]
        return F.conv2d(x, self.weight.expand(c, 1, self.k, self.k), padding=self.k // 2, groups=c)


#: ShareSepConv kernels at least this large are applied by FFT (the 15 x 15 depthwise conv is
#: ~6x slower fwd+bwd on CPU than the FFT; results agree to float rounding).
FFT_MIN_KERNEL = 11


def _fft_correlate(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Zero-padded "same" cross-correlation of every channel of x with one k x k filter, by FFT.

    Equals ``F.conv2d(x, w.expand(C, 1, k, k), padding=k // 2, groups=C)`` for odd k.
    Shape: x (B, C, H, W), w (k, k) -> (B, C, H, W).
    """
    k, p = w.shape[-1], w.shape[-1] // 2
    h, wd = x.shape[-2:]
    size = (h + k - 1, wd + k - 1)  # linear (not circular) convolution
    spec = torch.fft.rfft2(x, s=size) * torch.fft.rfft2(w.flip(-2, -1), s=size)
    return torch.fft.irfft2(spec, s=size)[..., p : p + h, p : p + wd]  # (B, C, H, W)


class WNConv2d(nn.Module):
    """Bias-free 3x3 conv with weight normalisation: weight = g * v / ||v|| (norm per output channel).

    Parameters ``weight_g`` (out, 1, 1, 1) and ``weight_v`` (out, in, 3, 3), as saved by
    ``torch.nn.utils.weight_norm``. Shape: (B, in, H, W) -> (B, out, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int) -> None:
        super().__init__()
        v = nn.Conv2d(in_ch, out_ch, 3, bias=False).weight.detach().clone()  # default init
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        weight = self.weight_v * (self.weight_g / norm)
        return F.conv2d(x, weight, padding=self.dilation, dilation=self.dilation)


class SDRB(nn.Module):
    """Smooth dilated residual block (released ``SmoothDilatedResidualBlock``); feats even.

    Shape: (B, F, H, W) -> (B, F, H, W).
    """

    def __init__(self, feats: int) -> None:
        super().__init__()
        for d in (1, 2, 4, 8):
            self.add_module(f"pre_conv{d}", ShareSepConv(2 * d - 1))
            self.add_module(f"conv{d}", WNConv2d(feats, feats // 2, d))
        self.conv = _conv(2 * feats, feats, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [
            F.leaky_relu(getattr(self, f"conv{d}")(getattr(self, f"pre_conv{d}")(x)), 0.2) for d in (1, 2, 4, 8)
        ]  # 4 x (B, F/2, H, W)
        return F.leaky_relu(self.conv(torch.cat(ys, dim=1)) + x, 0.2)


def _sdrbs(feats: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(SDRB(feats) for _ in range(n)))


class ORB(nn.Module):
    """Original-resolution block: ``num_blk`` SDRBs + 3x3 conv (no bias), plus identity."""

    def __init__(self, feats: int, num_blk: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*(SDRB(feats) for _ in range(num_blk)), _conv(feats, feats, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ORSNet(nn.Sequential):
    """Three original-resolution blocks ``orb1..3``."""

    def __init__(self, feats: int, num_blk: int) -> None:
        super().__init__()
        for i in (1, 2, 3):
            self.add_module(f"orb{i}", ORB(feats, num_blk))


def _resample(in_ch: int, out_ch: int, factor: float) -> nn.Sequential:
    """Bilinear x ``factor`` then a 1x1 conv (released DownSample.down / SkipUpSample.up)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
    )


class DownSample(nn.Module):
    """(B, F, h, w) -> (B, F + s, h/2, w/2)."""

    def __init__(self, feats: int, s: int) -> None:
        super().__init__()
        self.down = _resample(feats, feats + s, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class SkipUpSample(nn.Module):
    """up(x) + skip: (B, F + s, h, w), (B, F, 2h, 2w) -> (B, F, 2h, 2w)."""

    def __init__(self, feats: int, s: int) -> None:
        super().__init__()
        self.up = _resample(feats + s, feats, 2.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x) + skip


class Encoder(nn.Module):
    """3 levels of SDRBs, widths n, n + s, n + 2 s. (B, n, h, w) -> features at h, h/2, h/4."""

    def __init__(self, n: int, s: int, blocks: int) -> None:
        super().__init__()
        self.encoder_level1 = _sdrbs(n, blocks)
        self.encoder_level2 = _sdrbs(n + s, blocks)
        self.encoder_level3 = _sdrbs(n + 2 * s, blocks)
        self.down12 = DownSample(n, s)
        self.down23 = DownSample(n + s, s)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        enc1 = self.encoder_level1(x)  # (B, n, h, w)
        enc2 = self.encoder_level2(self.down12(enc1))  # (B, n + s, h/2, w/2)
        enc3 = self.encoder_level3(self.down23(enc2))  # (B, n + 2s, h/4, w/4)
        return [enc1, enc2, enc3]


class Decoder(nn.Module):
    """Mirror of :class:`Encoder` with SDRB-refined skips. Returns (B, n, h, w)."""

    def __init__(self, n: int, s: int, blocks: int) -> None:
        super().__init__()
        self.decoder_level1 = _sdrbs(n, blocks)
        self.decoder_level2 = _sdrbs(n + s, blocks)
        self.decoder_level3 = _sdrbs(n + 2 * s, blocks)
        self.skip_attn1 = SDRB(n)
        self.skip_attn2 = SDRB(n + s)
        self.up21 = SkipUpSample(n, s)
        self.up32 = SkipUpSample(n + s, s)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        enc1, enc2, enc3 = feats
        x = self.up32(self.decoder_level3(enc3), self.skip_attn2(enc2))  # (B, n + s, h/2, w/2)
        x = self.up21(self.decoder_level2(x), self.skip_attn1(enc1))  # (B, n, h, w)
        return self.decoder_level1(x)


def color_affine(img: torch.Tensor, gamma: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-pixel affine colour transform out[i] = sum_j gamma[i C + j] img[j] + delta[i].

    Shape: img (B, C, H, W), gamma (B, C * C, H, W), delta (B, C, H, W) -> (B, C, H, W).
    """
    b, c, h, w = img.shape
    return torch.einsum("bijhw,bjhw->bihw", gamma.view(b, c, c, h, w), img) + delta


@RESTORERS.register("bnudc")
class BNUDC(Restorer):
    """BNUDC (CVPR 2022): high- / low-frequency branches joined by affine transform connections.

    Args:
        channels: image channels C (3).
        n_feat_high: width of the high-frequency branch (even; released 72).
        n_feat_low: first width of the low-frequency encoder-decoder (even; released 32).
        scale_feats: width increment per encoder level (even; released 8).
        num_blk: SDRBs in each of the 3 original-resolution blocks (released 6).
        enc_blocks: SDRBs per encoder / decoder level (released 2).

    Shape:
        x: (B, C, H, W) -> (B, C, H, W); ``cond`` is ignored. Inputs are padded to a multiple
        of 16 (the low branch works at 1/4 of that and downsamples twice more).
    """

    multiple: int = 16
    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"channels": 3, "n_feat_high": 16, "n_feat_low": 8, "scale_feats": 4, "num_blk": 1, "enc_blocks": 1},
        "small": {"channels": 3, "n_feat_high": 24, "n_feat_low": 24, "scale_feats": 8, "num_blk": 1, "enc_blocks": 1},
        "paper": {"channels": 3, "n_feat_high": 72, "n_feat_low": 32, "scale_feats": 8, "num_blk": 6, "enc_blocks": 2},
    }

    def __init__(
        self,
        *,
        channels: int = 3,
        n_feat_high: int = 72,
        n_feat_low: int = 32,
        scale_feats: int = 8,
        num_blk: int = 6,
        enc_blocks: int = 2,
    ) -> None:
        super().__init__()
        if min(channels, n_feat_high, n_feat_low) < 1 or min(scale_feats, num_blk, enc_blocks) < 0:
            raise ValueError("BNUDC needs channels, widths >= 1 and block counts, scale_feats >= 0")
        if n_feat_high % 2 or n_feat_low % 2 or scale_feats % 2:
            raise ValueError("BNUDC widths and scale_feats must be even (SDRB halves them)")
        c = channels
        # high-frequency branch (half resolution via pixel unshuffle)
        self.shallow_feat = nn.Sequential(_conv(4 * c, n_feat_high, 3, bias=True), SDRB(n_feat_high))
        self.orsnet = ORSNet(n_feat_high, num_blk)
        self.tail = _conv(n_feat_high, 8 * c, 3, bias=True)  # alpha, beta at full resolution after shuffle
        # low-frequency branch (1/4 resolution and below)
        self.box_filter = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=c)
        nn.init.ones_(self.box_filter.weight)
        self.shallow_sub = nn.Sequential(_conv(c, n_feat_low, 3, bias=True), SDRB(n_feat_low))
        self.encoder_sub = Encoder(n_feat_low, scale_feats, enc_blocks)
        self.decoder_sub = Decoder(n_feat_low, scale_feats, enc_blocks)
        self.tail_sub = _conv(n_feat_low, c * c + c, 3, bias=True)  # gamma (C x C), delta (C)

    def high_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta), each (B, C, H, W), for a padded x (B, C, H, W)."""
        c = x.shape[1]
        feat = self.shallow_feat(F.pixel_unshuffle(x, 2))  # (B, n_high, H/2, W/2)
        feat = self.tail(self.orsnet(feat))  # (B, 8 C, H/2, W/2)
        alpha, beta = F.pixel_shuffle(feat, 2).split(c, dim=1)  # 2 x (B, C, H, W)
        return alpha, beta

    def low_features(self, x: torch.Tensor) -> torch.Tensor:
        """Low-branch features (B, n_low, H/4, W/4) for a padded x (B, C, H, W)."""
        small = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=True)  # (B, C, H/4, W/4)
        ones = small.new_ones(1, *small.shape[1:])
        small = self.box_filter(small) / self.box_filter(ones)  # normalised box blur
        return self.decoder_sub(self.encoder_sub(self.shallow_sub(small)))

    def low_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma (B, C * C, H, W), delta (B, C, H, W)) for a padded x (B, C, H, W)."""
        c = x.shape[1]
        out = self.tail_sub(self.low_features(x))  # (B, C * C + C, H/4, W/4)
        out = F.interpolate(out, scale_factor=4, mode="bilinear", align_corners=True)
        gamma, delta = out.split(c * c, dim=1)
        return gamma, delta

    def branches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate results for a padded x: x_high = alpha x + beta, x_low = gamma(x) + delta, out."""
        alpha, beta = self.high_branch(x)
        gamma, delta = self.low_branch(x)
        x_high = x * alpha + beta  # (B, C, H, W)
        return {
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "delta": delta,
            "x_high": x_high,
            "x_low": color_affine(x, gamma, delta),
            "out": color_affine(x_high, gamma, delta),
        }

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        alpha, beta = self.high_branch(x)
        gamma, delta = self.low_branch(x)
        out = color_affine(x * alpha + beta, gamma, delta)  # (B, C, H, W)
        return out - x  # residual
