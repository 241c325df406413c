"""Restormer: a U-shaped transformer with channel ("transposed") attention.

Zamir, Arora, Khan, Hayat, Khan and Yang, "Restormer: Efficient Transformer for
High-Resolution Image Restoration", CVPR 2022, arXiv 2111.09881; module and parameter names
follow the authors' released code (github.com/swz30/Restormer,
``basicsr/models/archs/restormer_arch.py``), so their checkpoints load with the identity key map.

Mechanism:
    1. Patch embedding: conv 3x3 to ``dim`` channels (bias-free).
    2. Four levels (``dim``, 2, 4, 8 x ``dim`` channels; full, 1/2, 1/4, 1/8 resolution) of
       transformer blocks: x + MDTA(LN(x)), then x + GDFN(LN(x)); LN is a layer norm over the
       channels of each pixel ("WithBias", or "BiasFree": no centring, no bias).
    3. MDTA (multi-Dconv head transposed attention): q, k, v from a 1x1 conv followed by a
       3x3 depth-wise conv; q and k are L2-normalised along the pixels and attention is
       computed between CHANNELS: a (C/heads x C/heads) map per head, scaled by a learned
       temperature, softmax, applied to v; linear in H * W. A 1x1 conv projects the output.
    4. GDFN (gated-Dconv feed-forward network): 1x1 conv to 2 x hidden channels, 3x3
       depth-wise conv, split in halves: GELU(first) * second, 1x1 conv back to ``dim``.
    5. Downsampling: conv 3x3 to C/2 + pixel-unshuffle (2C at half resolution); upsampling:
       conv 3x3 to 2C + pixel-shuffle (C/2 at double resolution). The decoder concatenates the
       encoder features of each scale (a 1x1 conv reduces the channels at levels 3 and 2; level
       1 keeps 2 dim channels), refinement blocks follow, a 3x3 conv gives the residual.

Sizes (3-channel images; ``num_parameters``):
    tiny:  dim 6,  blocks [1, 1, 1, 1], refinement 1, heads [1, 2, 4, 8] ->    119,855 parameters
    small: dim 12, blocks [1, 1, 2, 4], refinement 1, heads [1, 2, 4, 8] ->    872,209 parameters
    paper: dim 48, blocks [4, 6, 6, 8], refinement 4, heads [1, 2, 4, 8], expansion 2.66,
           bias-free convs, WithBias LN -> 26,126,644 parameters (published: 26.13 M).

Deviations from the released code: the dual-pixel defocus variant (6 input channels,
``skip_conv``) is left out; the input and output channel counts are both ``channels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.models.base import RESTORERS, Restorer

LAYERNORM_TYPES = ("WithBias", "BiasFree")


class BiasFreeLayerNorm(nn.Module):
    """x / sqrt(Var(x) + eps) * weight over the last axis (no centring, no bias). (..., C) -> (..., C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5) * self.weight


class WithBiasLayerNorm(nn.Module):
    """Standard layer norm over the last axis (eps 1e-5). (..., C) -> (..., C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-5)


class LayerNorm(nn.Module):
    """Layer norm over the channels of every pixel. Shape: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, layernorm_type: str) -> None:
        super().__init__()
        self.body = BiasFreeLayerNorm(dim) if layernorm_type == "BiasFree" else WithBiasLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # via (B, H, W, C)


class FeedForward(nn.Module):
    """GDFN: 1x1 conv -> depth-wise 3x3 -> GELU(gate half) * other half -> 1x1 conv.

    Shape: (B, C, H, W) -> (B, C, H, W); hidden width ``int(C * expansion)``.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)  # (B, hidden, H, W) each
        return self.project_out(F.gelu(gate) * value)  # (B, C, H, W)


class Attention(nn.Module):
    """MDTA: attention across channels, a (C/heads x C/heads) map per head, cost linear in H*W.

    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        qkv = self.qkv_dwconv(self.qkv(x)).view(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.unbind(1)  # (B, heads, C/heads, HW) each
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax channel-attention map (B, heads, C/heads, C/heads) for x (B, C, H, W)."""
        q, k, _ = self._qkv(x)
        return (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self._qkv(x)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)  # (B, heads, C/h, C/h)
        out = (attn @ v).reshape(b, c, h, w)  # (B, heads, C/h, HW) -> (B, C, H, W)
        return self.project_out(out)


class TransformerBlock(nn.Module):
    """x + MDTA(LN(x)), then x + GDFN(LN(x)). Shape: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool, layernorm_type: str) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, layernorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, layernorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    """conv 3x3 (bias-free). (B, C_in, H, W) -> (B, dim, H, W)."""

    def __init__(self, in_c: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """conv 3x3 to C/2 + pixel-unshuffle. (B, C, H, W) -> (B, 2C, H/2, W/2)."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """conv 3x3 to 2C + pixel-shuffle. (B, C, H, W) -> (B, C/2, 2H, 2W)."""

    def __init__(self, n_feat: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, 2 * n_feat, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@RESTORERS.register("restormer")
class Restormer(Restorer):
    """Restormer with a residual output (arXiv 2111.09881); 3 downsamplings, ``multiple`` = 8.

    Args:
        channels: image channels C (3 for RGB); input and output have the same.
        dim: channels of level 1; level i has ``dim * 2 ** (i - 1)`` (must be even).
        num_blocks: transformer blocks per level (4 entries; the decoder repeats levels 1-3).
        num_refinement_blocks: blocks after the decoder, at full resolution and 2 dim channels.
        heads: attention heads per level (4 entries, each dividing its level's channels).
        ffn_expansion_factor: GDFN hidden width / channels.
        bias: biases in the convolutions of the blocks and the output conv.
        layernorm_type: "WithBias" or "BiasFree".

    Shape:
        x: (B, C, H, W) -> (B, C, H, W); ``cond`` is ignored.
    """

    conditional: ClassVar[bool] = False
    multiple: int = 8
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"dim": 6, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8]},
        "small": {"dim": 12, "num_blocks": [1, 1, 2, 4], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8]},
        "paper": {"dim": 48, "num_blocks": [4, 6, 6, 8], "num_refinement_blocks": 4, "heads": [1, 2, 4, 8]},
    }

    def __init__(
        self,
        *,
        channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: str = "WithBias",
    ) -> None:
        super().__init__()
        num_blocks, heads = list(num_blocks), list(heads)
        dims = [dim, 2 * dim, 4 * dim, 8 * dim]
        if channels < 1 or dim < 2 or dim % 2 or len(num_blocks) != 4 or min(num_blocks) < 1 \
                or num_refinement_blocks < 0:
            raise ValueError(
                f"Restormer needs channels >= 1, an even dim, 4 block counts >= 1 and refinement >= 0, "
                f"got {channels}, {dim}, {num_blocks}, {num_refinement_blocks}"
            )
        if len(heads) != 4 or any(d % h for d, h in zip(dims, heads)) or dims[1] % heads[0]:
            raise ValueError(f"Restormer heads {heads} must divide the level widths {dims} (and {dims[1]} for level 1)")
        if layernorm_type not in LAYERNORM_TYPES:
            raise ValueError(
                f"Restormer layernorm_type must be one of {', '.join(LAYERNORM_TYPES)}, got {layernorm_type!r}"
            )

        def stage(width: int, n_heads: int, n: int) -> nn.Sequential:
            return nn.Sequential(
                *(TransformerBlock(width, n_heads, ffn_expansion_factor, bias, layernorm_type) for _ in range(n))
            )

        self.patch_embed = OverlapPatchEmbed(channels, dim)
        self.encoder_level1 = stage(dims[0], heads[0], num_blocks[0])
        self.down1_2 = Downsample(dims[0])
        self.encoder_level2 = stage(dims[1], heads[1], num_blocks[1])
        self.down2_3 = Downsample(dims[1])
        self.encoder_level3 = stage(dims[2], heads[2], num_blocks[2])
        self.down3_4 = Downsample(dims[2])
        self.latent = stage(dims[3], heads[3], num_blocks[3])
        self.up4_3 = Upsample(dims[3])
        self.reduce_chan_level3 = nn.Conv2d(dims[3], dims[2], 1, bias=bias)
        self.decoder_level3 = stage(dims[2], heads[2], num_blocks[2])
        self.up3_2 = Upsample(dims[2])
        self.reduce_chan_level2 = nn.Conv2d(dims[2], dims[1], 1, bias=bias)
        self.decoder_level2 = stage(dims[1], heads[1], num_blocks[1])
        self.up2_1 = Upsample(dims[1])  # no channel reduction at level 1: 2 dim channels on
        self.decoder_level1 = stage(dims[1], heads[0], num_blocks[0])
        self.refinement = stage(dims[1], heads[0], num_refinement_blocks)
        self.output = nn.Conv2d(dims[1], channels, 3, padding=1, bias=bias)

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        enc1 = self.encoder_level1(self.patch_embed(x))  # (B, d, H, W)
        enc2 = self.encoder_level2(self.down1_2(enc1))  # (B, 2d, H/2, W/2)
        enc3 = self.encoder_level3(self.down2_3(enc2))  # (B, 4d, H/4, W/4)
        latent = self.latent(self.down3_4(enc3))  # (B, 8d, H/8, W/8)
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], dim=1))  # (B, 4d, H/4, W/4)
        dec3 = self.decoder_level3(dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], dim=1))  # (B, 2d, H/2, W/2)
        dec2 = self.decoder_level2(dec2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], dim=1))  # (B, 2d, H, W)
        return self.output(self.refinement(dec1))  # (B, C, H, W) residual
