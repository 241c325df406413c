"""UDC-UNet: U-shape dynamic network with SFT modulation and PSF-conditioned dynamic kernels.

Liu, Hu, Chen and Dong, "UDC-UNet: Under-Display Camera Image Restoration via U-Shape
Dynamic Network", ECCV 2022 workshops (MIPI challenge, 2nd place UDC track), arXiv 2209.01809;
structure, layer sizes and submodule names follow the authors' released code
(github.com/J-FHu/UDCUNet, ``basicsr/archs/UDCUNet_arch.py`` and ``arch_util.py``, config
``options/train/UDCUNet_train.yml``: nf 32, depths [2, 2, 2, 8, 2, 2, 2], DyK_size 3), so our
state_dict keys equal the released ones (``cond_head.0.weight``, ``KNet3.6.bias``,
``Bottom_conv.7.sft2.SFT_shift_conv1.weight``, ...).

Mechanism:
    1. Base network: a U-Net of widths nf, 2 nf, 4 nf, 8 nf (3 stride-2 3x3 conv downsamplings,
       pixel-shuffle upsamplings). Every stage is a stack of SFT residual blocks
       f + conv2(SFT2(LReLU(conv1(SFT1(f, c))), c)), where SFT(f, c) = f * (1 + scale(c)) +
       shift(c) and scale / shift are two-layer 1x1 conv nets of a condition map c (spatial
       feature transform).
    2. Condition branch: ``cond_head`` + ``cond_first`` (2 residual blocks) on the image, then
       ``CondNet0..3`` (strided 3x3 / 1x1 convs) give the condition map of each scale,
       (B, nf 2^s, H / 2^s, W / 2^s): spatially variant modulation of the encoder, bottom and
       decoder blocks of that scale.
    3. Kernel branch: ``k_head`` + ``k_first`` on cat(image, PSF code spread spatially),
       (B, C + d, H, W); ``KNet0..3`` give per-pixel, per-channel k x k kernels
       (B, nf 2^s k^2, H / 2^s, W / 2^s). They filter the encoder features of each scale
       (:func:`~udcguard.models.discnet.dynamic_conv`, replicate padding); the results are added
       to the bottom output and to each decoder scale's upsampled features.
    4. A 3x3 conv gives the residual.

Deviations from the released code:
    - The released forward hard-codes one PSF code (a 5-vector constant); here the code is
      ``cond`` (B, d), so the model is conditional and ``k_head`` takes C + d channels.
    - The released output is ``relu(x + conv_last(...))``; here it is x + residual, unclamped
      (the base-class contract). For outputs >= 0 both agree, and the caller's clamp to [0, 1]
      subsumes the ReLU; dropping it keeps gradients for attacks where the pre-clamp output is
      used (the ReLU would zero them on negative outputs).
    - The SFT hidden width is hard-coded to 32 in the released blocks; here it is ``sft_nf``
      (32 in the paper preset).
    - The authors train with a tone-mapped L1 loss because their data are HDR; our data are
      already tone-mapped (x / (x + 0.25)), so the pipeline's loss on the model output is that
      loss in the tone-mapped domain; nothing here depends on it.
    The released ``kernel2d_conv`` computes out[c, y, x] = sum_ij K[c k^2 + i k + j, y, x]
    * f_pad[c, y + i, x + j] with replicate padding: the layout of ``dynamic_conv``.

Sizes (d = 5; ``num_parameters``):
    tiny:  nf 4,  depths [1,1,1,1,1,1,1], k 3, sft_nf 4  ->     71,219 parameters
    small: nf 8,  depths [1,1,1,2,1,1,1], k 3, sft_nf 8  ->    358,787 parameters
    paper: nf 32, depths [2,2,2,8,2,2,2], k 3, sft_nf 32 -> 14,057,091 parameters, exactly the
           released model's count (same modules, keys and shapes; checked against a transcription
           of the released code). No published parameter count was found to compare with.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.models.base import RESTORERS, Restorer
from udcguard.models.discnet import ResBlock, dynamic_conv

NUM_SCALES = 4  # full, 1/2, 1/4 and the bottom at 1/8


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2)


class SFTLayer(nn.Module):
    """Spatial feature transform: f * (1 + scale(c)) + shift(c), scale / shift = 1x1 conv nets.

    Shape: feat (B, C, H, W), cond (B, C_c, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.SFT_scale_conv0 = nn.Conv2d(cond_channels, hidden, 1)
        self.SFT_scale_conv1 = nn.Conv2d(hidden, channels, 1)
        self.SFT_shift_conv0 = nn.Conv2d(cond_channels, hidden, 1)
        self.SFT_shift_conv1 = nn.Conv2d(hidden, channels, 1)

    def scale_shift(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (B, C, H, W), from the condition map (B, C_c, H, W)."""
        scale = self.SFT_scale_conv1(F.leaky_relu(self.SFT_scale_conv0(cond), 0.2))
        shift = self.SFT_shift_conv1(F.leaky_relu(self.SFT_shift_conv0(cond), 0.2))
        return scale, shift

    def forward(self, feat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift(cond)
        return feat * (scale + 1) + shift  # (B, C, H, W)


class SFTResBlock(nn.Module):
    """f + conv2(SFT2(LReLU(conv1(SFT1(f, c))), c)); convs start at 0.1 x Kaiming (as released).

    Shape: feat (B, C, H, W), cond (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, sft_hidden: int) -> None:
        super().__init__()
        self.sft1 = SFTLayer(channels, channels, sft_hidden)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.sft2 = SFTLayer(channels, channels, sft_hidden)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, feat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(self.sft1(feat, cond)), 0.2)
        return feat + self.conv2(self.sft2(h, cond))  # (B, C, H, W)


class SFTStage(nn.ModuleList):
    """A stack of :class:`SFTResBlock` sharing one condition map (keys ``<stage>.<i>.*``)."""

    def __init__(self, channels: int, sft_hidden: int, depth: int) -> None:
        super().__init__(SFTResBlock(channels, sft_hidden) for _ in range(depth))

    def forward(self, feat: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self:
            feat = block(feat, cond)
        return feat


def _scale_head(nf: int, out_ch: int, num_down: int) -> nn.Sequential:
    """CondNet_s / KNet_s: 3 x (conv + LReLU), the first ``num_down`` 3x3 stride 2, others 1x1; 1x1 out.

    Shape: (B, nf, H, W) -> (B, out_ch, H / 2^num_down, W / 2^num_down).
    """
    layers: list[nn.Module] = []
    for i in range(3):
        conv = nn.Conv2d(nf, nf, 3, 2, 1) if i < num_down else nn.Conv2d(nf, nf, 1)
        layers += [conv, _lrelu()]
    layers.append(nn.Conv2d(nf, out_ch, 1))
    return nn.Sequential(*layers)


@RESTORERS.register("udcunet")
class UDCUNet(Restorer):
    """UDC-UNet (arXiv 2209.01809): SFT-modulated U-Net with PSF-conditioned dynamic kernels.

    Args:
        channels: image channels C (3).
        cond_dim: PSF code length d (5: the PCA kernel code).
        nf: width of the first scale; scales have nf, 2 nf, 4 nf, 8 nf channels (paper: 32).
        depths: SFT residual blocks of the 7 stages: encoder 0, 1, 2, bottom, decoder 2, 1, 0.
        kernel_size: k of the k x k dynamic kernels, odd (released DyK_size: 3).
        sft_nf: hidden width of the SFT scale / shift nets (released: 32).

    Shape:
        x: (B, C, H, W), cond: (B, d) -> (B, C, H, W). Inputs are padded to a multiple of 8.
    """

    multiple: int = 8
    conditional: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"channels": 3, "nf": 4, "depths": [1, 1, 1, 1, 1, 1, 1], "kernel_size": 3, "sft_nf": 4},
        "small": {"channels": 3, "nf": 8, "depths": [1, 1, 1, 2, 1, 1, 1], "kernel_size": 3, "sft_nf": 8},
        "paper": {"channels": 3, "nf": 32, "depths": [2, 2, 2, 8, 2, 2, 2], "kernel_size": 3, "sft_nf": 32},
    }

    def __init__(
        self,
        *,
        channels: int = 3,
        cond_dim: int = 5,
        nf: int = 32,
        depths: list[int] | tuple[int, ...] = (2, 2, 2, 8, 2, 2, 2),
        kernel_size: int = 3,
        sft_nf: int = 32,
    ) -> None:
        super().__init__()
        depths = [int(n) for n in depths]
        if len(depths) != 7 or min(depths) < 0:
            raise ValueError(f"UDCUNet depths must be 7 non-negative block counts, got {depths}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"UDCUNet kernel_size must be odd and >= 1, got {kernel_size}")
        if min(channels, cond_dim, nf, sft_nf) < 1:
            raise ValueError("UDCUNet needs channels, cond_dim, nf, sft_nf >= 1")
        self.cond_dim = cond_dim
        self.k = kernel_size
        widths = [nf << s for s in range(NUM_SCALES)]  # nf, 2 nf, 4 nf, 8 nf
        k2 = kernel_size * kernel_size

        # condition branch (image -> per-scale modulation maps)
        self.cond_head = nn.Sequential(nn.Conv2d(channels, nf, 3, 1, 1), _lrelu())
        self.cond_first = nn.Sequential(ResBlock(nf), ResBlock(nf))
        for s, w in enumerate(widths):
            self.add_module(f"CondNet{s}", _scale_head(nf, w, s))
        # kernel branch (image + PSF code -> per-scale dynamic kernels)
        self.k_head = nn.Sequential(nn.Conv2d(channels + cond_dim, nf, 3, 1, 1), _lrelu())
        self.k_first = nn.Sequential(ResBlock(nf), ResBlock(nf))
        for s, w in enumerate(widths):
            self.add_module(f"KNet{s}", _scale_head(nf, w * k2, s))
        # base U-Net
        self.conv_first = nn.Sequential(nn.Conv2d(channels, nf, 3, 1, 1), _lrelu())
        for s in range(3):
            self.add_module(f"enconv_layer{s}", SFTStage(widths[s], sft_nf, depths[s]))
            self.add_module(f"down_conv{s}", nn.Conv2d(widths[s], widths[s + 1], 3, 2, 1))
        self.Bottom_conv = SFTStage(widths[3], sft_nf, depths[3])
        for s in (2, 1, 0):
            up = nn.Sequential(nn.Conv2d(widths[s + 1], 4 * widths[s], 3, 1, 1), nn.PixelShuffle(2))
            self.add_module(f"up_conv{s}", up)
            self.add_module(f"deconv_layer{s}", SFTStage(widths[s], sft_nf, depths[6 - s]))
        self.conv_last = nn.Conv2d(nf, channels, 3, 1, 1)

    def _heads(self, prefix: str) -> list[nn.Module]:
        return [getattr(self, f"{prefix}{s}") for s in range(NUM_SCALES)]

    def condition_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """SFT condition maps [(B, nf 2^s, H / 2^s, W / 2^s)], s = 0..3, for a padded x."""
        feat = self.cond_first(self.cond_head(x))  # (B, nf, H, W)
        return [head(feat) for head in self._heads("CondNet")]

    def dynamic_kernels(self, x: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        """Per-pixel kernels [(B, nf 2^s k^2, H / 2^s, W / 2^s)], s = 0..3, for a padded x, code cond."""
        b, _, h, w = x.shape
        code_map = cond[:, :, None, None].expand(b, self.cond_dim, h, w)  # (B, d, H, W)
        feat = self.k_first(self.k_head(torch.cat([x, code_map], dim=1)))  # (B, nf, H, W)
        return [head(feat) for head in self._heads("KNet")]

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        assert cond is not None  # checked by Restorer.forward
        kernels = self.dynamic_kernels(x, cond)
        conds = self.condition_maps(x)
        feat = self.conv_first(x)  # (B, nf, H, W)
        skips = []  # encoder features of scales 0..2, then the bottom's input
        for s in range(3):
            feat = getattr(self, f"enconv_layer{s}")(feat, conds[s])  # (B, nf 2^s, H_s, W_s)
            skips.append(feat)
            feat = getattr(self, f"down_conv{s}")(feat)  # (B, nf 2^(s+1), H_s / 2, W_s / 2)
        skips.append(feat)
        # bottom: SFT blocks on the last downsampled features, plus their dynamic filtering
        feat = self.Bottom_conv(feat, conds[3]) + dynamic_conv(skips[3], kernels[3], self.k)  # (B, 8 nf, H/8, W/8)
        for s in (2, 1, 0):
            up = getattr(self, f"up_conv{s}")(feat) + dynamic_conv(skips[s], kernels[s], self.k)
            feat = getattr(self, f"deconv_layer{s}")(up, conds[s])  # (B, nf 2^s, H_s, W_s)
        return self.conv_last(feat)  # (B, C, H, W) residual
