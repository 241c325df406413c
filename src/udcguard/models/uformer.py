"""Uformer: a U-shaped transformer of locally-enhanced window (LeWin) blocks.

Wang, Cun, Bao, Zhou, Liu and Li, "Uformer: A General U-Shaped Transformer for Image
Restoration", CVPR 2022, arXiv 2106.03106; module and parameter names follow the authors'
released code (github.com/ZhendongWang6/Uformer, ``model.py``: token_projection "linear",
token_mlp "leff", modulator on), so their checkpoints load with the identity key map.

Mechanism:
    1. Input projection: conv 3x3 + LeakyReLU to ``embed_dim`` channels, then tokens (B, HW, C).
    2. Encoder: per level, a stack of LeWin blocks, then a 4x4 stride-2 conv halving the
       resolution and doubling the channels; a LeWin bottleneck follows the last level.
    3. LeWin block: x + W-MSA(LN(x)), then x + LeFF(LN(x)). W-MSA is multi-head
       self-attention inside non-overlapping win x win windows with a learned relative
       position bias; every second block shifts the windows by win / 2 (cyclic roll plus a
       mask, as in Swin). LeFF: linear (x4) -> GELU -> depth-wise 3x3 conv -> GELU -> linear.
    4. Decoder: per level, a 2x2 stride-2 transposed conv, concatenation with the encoder
       tokens of that scale, and LeWin blocks whose windows receive the learnable multi-scale
       restoration modulator: an ``nn.Embedding(win * win, C)`` added to every window's
       tokens before the attention (hence to its queries, keys and values, as released).
    5. Output projection: conv 3x3 to the image channels, the residual added to the input.

Sizes (3-channel images, modulator on, mlp_ratio 4, heads = channels / embed; ``num_parameters``):
    tiny:  embed 8,  2 levels, depths [1] * 5, win 8 (multiple 32)  ->     57,040 parameters
    small: embed 16, 3 levels, depths [1] * 7, win 8 (multiple 64)  ->    791,552 parameters
    paper: Uformer-B: embed 32, 4 levels, depths [1, 2, 8, 8, 2, 8, 8, 2, 1], win 8
           (multiple 128)                                           -> 50,880,946 parameters
           (published: 50.88 M)

Deviations from the released code: any H x W (it assumes square maps); the shifted-window
blocks skip the shift on maps of a single window, decided per forward from the actual size
(released: decided once from ``img_size``, the training patch size; identical when testing at
that size); no stochastic depth (drop_path 0.1 in training) and no dropout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udcguard.models.base import RESTORERS, Restorer


def window_partition(x: torch.Tensor, win: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, win * win, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // win, win, w // win, win, c)  # (B, H/win, win, W/win, win, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)


def window_reverse(windows: torch.Tensor, win: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, win * win, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // win, w // win, win, win, c)  # (B, H/win, W/win, win, win, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shift_mask(h: int, w: int, win: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask (nW, N, N) of shifted windows: -100 between tokens from different regions."""
    regions = torch.zeros(1, h, w, 1, device=device)
    cuts = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
        regions[:, hs, ws, :] = i
    ids = window_partition(regions, win).squeeze(-1)  # (nW, N)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)  # (nW, N, N)
    return diff.ne(0).float() * -100.0


class LinearProjection(nn.Module):
    """Queries from ``to_q``, keys and values from ``to_kv``. (B', N, C) -> 3 x (B', heads, N, C/heads)."""

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        q = self.to_q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B', h, N, d)
        kv = self.to_kv(x).view(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return q, kv[0], kv[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention within a window, with a relative position bias.

    Shape: x (B * nW, win * win, C), mask (nW, N, N) or None -> (B * nW, win * win, C).
    """

    def __init__(self, dim: int, win_size: int, num_heads: int) -> None:
        super().__init__()
        self.win_size, self.num_heads = win_size, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(win_size), torch.arange(win_size), indexing="ij"))
        coords = coords.flatten(1)  # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (win_size - 1)  # (N, N, 2)
        # persistent, as released: the authors' checkpoints carry it
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * win_size - 1) + rel[..., 1])
        self.qkv = LinearProjection(dim, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x)  # (B', h, N, d) each
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N * N, h)
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # (1, h, N, N)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).repeat(bw // nw, 1, 1, 1)  # (B', h, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(q k^T / sqrt(d) + bias) v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))  # (B', N, C)


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: linear -> GELU -> depth-wise 3x3 conv -> GELU -> linear.

    Shape: tokens (B, H * W, C) of an H x W map -> (B, H * W, C).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b = x.shape[0]
        x = self.linear1(x)  # (B, HW, hidden)
        x = x.transpose(1, 2).reshape(b, -1, h, w)  # (B, hidden, H, W)
        x = self.dwconv(x).flatten(2).transpose(1, 2)  # (B, HW, hidden)
        return self.linear2(x)  # (B, HW, C)


class LeWinBlock(nn.Module):
    """LeWin transformer block: x + W-MSA(LN(x)); x + LeFF(LN(x)). Shape: (B, H*W, C) -> (B, H*W, C).

    ``shift_size`` > 0 shifts the windows (skipped on maps of a single window, like the
    released code, which disables the shift where the resolution is <= win_size).
    ``modulator``: add a learned (win * win, C) embedding to every window before attention.
    """

    def __init__(
        self, dim: int, num_heads: int, win_size: int, shift_size: int, mlp_ratio: float, modulator: bool
    ) -> None:
        super().__init__()
        self.win_size, self.shift_size = win_size, shift_size
        self.modulator = nn.Embedding(win_size * win_size, dim) if modulator else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, win_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LeFF(dim, int(dim * mlp_ratio))

    def attend(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The (shifted-)window attention branch W-MSA(LN(x)): (B, H*W, C) -> (B, H*W, C)."""
        b, _, c = x.shape
        win = self.win_size
        shift = self.shift_size if min(h, w) > win else 0
        x = self.norm1(x).view(b, h, w, c)  # (B, H, W, C)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, win)  # (B * nW, N, C)
        if self.modulator is not None:
            windows = windows + self.modulator.weight  # (N, C) broadcast over windows
        mask = shift_mask(h, w, win, shift, x.device) if shift else None
        x = window_reverse(self.attn(windows, mask), win, h, w)  # (B, H, W, C)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x.reshape(b, h * w, c)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attend(x, h, w)  # (B, HW, C)
        return x + self.mlp(self.norm2(x), h, w)


class BasicUformerLayer(nn.Module):
    """``depth`` LeWin blocks, every second one with shifted windows. (B, H*W, C) -> (B, H*W, C)."""

    def __init__(self, dim: int, depth: int, num_heads: int, win_size: int, mlp_ratio: float, modulator: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            LeWinBlock(dim, num_heads, win_size, 0 if i % 2 == 0 else win_size // 2, mlp_ratio, modulator)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, h, w)
        return x


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


def _image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, HW, C) -> (B, C, H, W)


class InputProj(nn.Module):
    """conv 3x3 + LeakyReLU. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channel, out_channel, 3, padding=1), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class OutputProj(nn.Module):
    """conv 3x3. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channel, out_channel, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """conv 4x4, stride 2. (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channel, out_channel, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """transposed conv 2x2, stride 2. (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(in_channel, out_channel, 2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(x)


@RESTORERS.register("uformer")
class Uformer(Restorer):
    """Uformer with a residual output (arXiv 2106.03106).

    Args:
        channels: image channels C (3 for RGB); input and output have the same.
        embed_dim: channels of the first level; level i has ``embed_dim * 2 ** i``.
        depths: LeWin blocks per stage: L encoder levels, the bottleneck, L decoder levels
            (odd length 2 L + 1; the paper has L = 4).
        num_heads: heads per stage (same length as ``depths``); None: channels / embed_dim
            (the released [1, 2, 4, 8, 16, 16, 8, 4, 2] for L = 4).
        win_size: attention window side; inputs are padded to a multiple of ``win_size * 2 ** L``.
        mlp_ratio: LeFF hidden width / channels.
        modulator: learnable multi-scale restoration modulator in the decoder blocks.

    Shape:
        x: (B, C, H, W) -> (B, C, H, W); ``cond`` is ignored.
    """

    conditional: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"channels": 3, "embed_dim": 8, "depths": [1, 1, 1, 1, 1], "win_size": 8},
        "small": {"channels": 3, "embed_dim": 16, "depths": [1, 1, 1, 1, 1, 1, 1], "win_size": 8},
        "paper": {"channels": 3, "embed_dim": 32, "depths": [1, 2, 8, 8, 2, 8, 8, 2, 1], "win_size": 8},
    }

    def __init__(
        self,
        *,
        channels: int = 3,
        embed_dim: int = 32,
        depths: Sequence[int] = (1, 2, 8, 8, 2, 8, 8, 2, 1),
        num_heads: Sequence[int] | None = None,
        win_size: int = 8,
        mlp_ratio: float = 4.0,
        modulator: bool = True,
    ) -> None:
        super().__init__()
        depths = list(depths)
        if len(depths) % 2 != 1 or len(depths) < 3 or min(depths) < 1:
            raise ValueError(f"Uformer depths must have odd length >= 3 and entries >= 1, got {depths}")
        if channels < 1 or embed_dim < 1 or win_size < 2:
            raise ValueError(
                f"Uformer needs channels, embed_dim >= 1 and win_size >= 2, got {channels}, {embed_dim}, {win_size}"
            )
        levels = len(depths) // 2
        stage_dims = [embed_dim * 2**i for i in range(levels + 1)]  # encoder levels + bottleneck
        stage_dims += [embed_dim * 2 ** (levels - j) for j in range(levels)]  # decoder (after concat)
        heads_arg = None if num_heads is None else list(num_heads)
        num_heads = [d // embed_dim for d in stage_dims] if heads_arg is None else heads_arg
        if len(num_heads) != len(depths) or any(d % h for d, h in zip(stage_dims, num_heads)):
            raise ValueError(f"Uformer num_heads {num_heads} must divide the stage widths {stage_dims}")
        self.levels = levels
        self.multiple = win_size * 2**levels

        def layer(i: int, mod: bool) -> BasicUformerLayer:
            return BasicUformerLayer(stage_dims[i], depths[i], num_heads[i], win_size, mlp_ratio, mod)

        self.input_proj = InputProj(channels, embed_dim)
        self.output_proj = OutputProj(2 * embed_dim, channels)
        for i in range(levels):
            self.add_module(f"encoderlayer_{i}", layer(i, False))
            self.add_module(f"dowsample_{i}", Downsample(stage_dims[i], stage_dims[i + 1]))  # sic, as released
        self.conv = layer(levels, False)  # bottleneck
        for j in range(levels):
            in_dim = stage_dims[levels] if j == 0 else stage_dims[levels + j]
            self.add_module(f"upsample_{j}", Upsample(in_dim, stage_dims[levels - 1 - j]))
            self.add_module(f"decoderlayer_{j}", layer(levels + 1 + j, modulator))
        self.apply(_init_weights)

    def _forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = _tokens(self.input_proj(x))  # (B, HW, E)
        skips = []
        for i in range(self.levels):
            y = getattr(self, f"encoderlayer_{i}")(y, h >> i, w >> i)  # (B, HW / 4^i, E 2^i)
            skips.append(y)
            y = _tokens(getattr(self, f"dowsample_{i}")(_image(y, h >> i, w >> i)))  # (B, HW / 4^(i+1), E 2^(i+1))
        y = self.conv(y, h >> self.levels, w >> self.levels)  # (B, HW / 4^L, E 2^L)
        for j in range(self.levels):
            s = self.levels - 1 - j  # scale of this decoder level
            up = getattr(self, f"upsample_{j}")(_image(y, h >> (s + 1), w >> (s + 1)))  # (B, E 2^s, H/2^s, W/2^s)
            y = torch.cat([_tokens(up), skips[s]], dim=-1)  # (B, HW / 4^s, E 2^(s+1))
            y = getattr(self, f"decoderlayer_{j}")(y, h >> s, w >> s)
        return self.output_proj(_image(y, h, w))  # (B, C, H, W) residual


def _init_weights(m: nn.Module) -> None:
    """As released: truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
