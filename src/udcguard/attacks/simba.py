"""SimBA: Guo et al., "Simple Black-box Adversarial Attacks", ICML 2019, arXiv 1905.07121.

    for q in Q (a random order of an orthonormal basis):
        for s in (+1, -1):
            if d(f(x + mask * (delta + s * eps * q)), r) > d(f(x + mask * delta), r):
                delta += s * eps * q; break

Queries only: the model is called under ``torch.no_grad()`` and no gradient is ever taken.
The bases are the pixel basis (SimBA) and the orthonormal 2-D DCT basis (SimBA-DCT) in the
paper's low-frequency-first ("strided") order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from udcguard.attacks.base import (
    ATTACKS,
    Attack,
    AttackArgumentError,
    Calls,
    ModelFn,
    Perturbation,
    check_eps,
    check_steps,
)

#: Valid values of ``basis``.
BASES = ("pixel", "dct")


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Orthonormal DCT-II matrix (n, n): row k is the k-th cosine, D @ D.T = I."""
    i = torch.arange(n, dtype=torch.float64)
    k = i.view(-1, 1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def block_dct_matrix(size: int, block: int, *, dtype: torch.dtype, device) -> Tensor:
    """(size, size) block-diagonal I ⊗ D_block: the block-wise orthonormal DCT of a signal."""
    eye = torch.eye(size // block, dtype=dtype, device=device)
    return torch.kron(eye, dct_matrix(block, dtype=dtype, device=device))


def frequency_rings(h: int, w: int, block: int, freq_dims: int, stride: int) -> Tensor:
    """(H, W) int64 rank of each DCT coefficient in the paper's "strided" order.

    Coefficient (row, col) has the within-block frequency (u, v) = (row % block, col % block);
    ring 0 is max(u, v) < freq_dims, then rings of width ``stride``: 1 + (max(u, v) -
    freq_dims) // stride. Lower rings are tried first (the paper's ``block_order``).
    """
    u = (torch.arange(h) % block).view(-1, 1)
    v = (torch.arange(w) % block).view(1, -1)
    m = torch.maximum(u, v)
    return torch.where(m < freq_dims, 0, 1 + torch.div(m - freq_dims, stride, rounding_mode="floor"))


@ATTACKS.register("simba")
class SimBA(Attack):
    r"""Greedy +/- eps steps along a random order of basis directions, from queries alone.

    Paper: arXiv 1905.07121 (Guo et al., ICML 2019), Algorithm 1, untargeted, with the
    objective d(f(y + delta), r) in place of the class probability (increase instead of
    decrease). Threat model: black-box (score-based): the attacker sees d(f(.), r) only; each
    candidate costs one query and no gradient is taken. On the degraded input in [0, 1]; every
    candidate is clip_[0, 1](x + mask * delta) (design.md, section 3). The paper's UDC setting
    is 1000 iterations with step 4/256. Starting from delta = 0 works against the clean
    output: there the objective is 0, its minimum, so any step that changes f(x) is accepted.

    Order: each image of the batch draws its own random order from the call's ``generator``
    (images 0..B-1 in sequence), so the result of an image depends on its position in the
    batch but the call is reproducible from the seed. Pixel basis: a random permutation of the
    C*H*W coordinates (those inside the mask first, so no query is spent on a direction the
    mask would cancel). DCT basis: the coefficients sorted by frequency ring (see
    :func:`frequency_rings`, the paper's ``block_order``), a random permutation within each
    ring. Each candidate direction is tried with +eps, then (for the images where + did not
    increase the objective) with -eps; a step is kept only if it strictly increases the
    objective. There is no early stop (restoration has no success criterion).

    Budget: each direction is used at most once and the directions are orthonormal, so before
    clipping and masking (which only shrink delta elementwise) ||delta||_2 <= eps * sqrt(T),
    T = number of iterations; in the pixel basis each coordinate moves at most once, so
    ||delta||_inf <= eps as well. Hence ``norm`` is "linf" with ``self.eps = eps`` for the
    pixel basis, and "l2" with ``self.eps = eps * sqrt(iterations)`` for the DCT basis; the
    step itself is ``self.step``.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()),
            always under ``torch.no_grad()``.
        eps: step size along a basis direction, in image units (the paper's epsilon; every
            basis vector has unit L2 norm). Default 4/256.
        iterations: basis directions tried, at most 2 queries each. Default 1000. Capped at
            the number of directions C*H*W (the basis is exhausted).
        basis: "pixel" (default) or "dct".
        freq_dims: DCT only, side of the low-frequency square tried first (ring 0).
            Default None: max(1, side // 8), side = block_size or min(H, W) (the paper's
            28 for 224-pixel images).
        stride: DCT only, width of the following rings. Default None: max(1, side // 32)
            (the paper's 7 for 224).
        block_size: DCT only, side of the square DCT blocks; H and W must be multiples of it.
            Default None: one DCT over the whole image (separable, H x W), as in the paper.
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce").
        - result.x_adv: (B, C, H, W) in [0, 1]; delta is exactly 0 outside the mask.

    Cost: at most 1 + 2 * min(iterations, C*H*W) forward queries, no backward pass: one for
    r = f(x) (reference "clean_output"; the clean objective d(r, r) needs no query) or for
    d(f(x), gt) (reference "gt"), then per iteration one query with +eps and, unless every
    image improved, one with -eps on the images that did not. ``queries`` counts them;
    ``grads`` is 0.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        eps: float = 4 / 256,
        iterations: int = 1000,
        basis: str = "pixel",
        freq_dims: int | None = None,
        stride: int | None = None,
        block_size: int | None = None,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        self.step = check_eps(eps)
        self.iterations = check_steps(iterations, "iterations")
        if basis not in BASES:
            raise AttackArgumentError(f"unknown basis {basis!r}; valid: {', '.join(BASES)}")
        self.basis = basis
        self.freq_dims = None if freq_dims is None else check_steps(freq_dims, "freq_dims")
        self.stride = None if stride is None else check_steps(stride, "stride")
        self.block_size = None if block_size is None else check_steps(block_size, "block_size")
        if basis == "pixel" and (freq_dims, stride, block_size) != (None, None, None):
            raise AttackArgumentError(
                "freq_dims, stride and block_size apply to basis='dct' only"
            )
        # the guaranteed budget (see the class docstring); instance attributes override the
        # class-level defaults of Attack
        self.norm = "linf" if basis == "pixel" else "l2"
        self.bounded = True
        self.eps = self.step if basis == "pixel" else self.step * math.sqrt(self.iterations)

    def __repr__(self) -> str:
        dct = (
            f", freq_dims={self.freq_dims}, stride={self.stride}, block_size={self.block_size}"
            if self.basis == "dct"
            else ""
        )
        return (
            f"SimBA(eps={self.step:.6g}, iterations={self.iterations}, basis={self.basis!r}"
            f"{dct}, objective={self.objective!r}, reference={self.reference!r})"
        )

    # ------------------------------------------------------------ basis and order
    def _dct_setup(self, h: int, w: int) -> tuple[int, int, int]:
        block = self.block_size
        if block is not None and (h % block or w % block):
            raise AttackArgumentError(
                f"block_size={block} must divide the image size ({h}, {w})"
            )
        side = block if block is not None else min(h, w)
        freq = self.freq_dims if self.freq_dims is not None else max(1, side // 8)
        stride = self.stride if self.stride is not None else max(1, side // 32)
        return freq, stride, block if block is not None else max(h, w)

    def _orders(self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """(B, C*H*W) int64: per image, the flat indices of the directions in trial order."""
        b, c, h, w = x.shape
        n = c * h * w
        if self.basis == "pixel":
            rank = (
                torch.zeros(b, n, dtype=torch.long)
                if mask is None
                else (mask.expand_as(x) == 0).flatten(1).long().cpu()  # outside last
            )
        else:
            freq, stride, block = self._dct_setup(h, w)
            rank = frequency_rings(h, w, block, freq, stride).expand(b, c, h, w).reshape(b, n)
        perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])
        return torch.argsort(rank * n + perms, dim=1).to(x.device)

    def _directions(self, idx: Tensor, x: Tensor, mats: tuple[Tensor, Tensor] | None) -> Tensor:
        """(B, C, H, W) unit basis vectors, image i along flat index idx[i]."""
        b, c, h, w = x.shape
        q = torch.zeros(b, c * h * w, dtype=x.dtype, device=x.device)
        rows = torch.arange(b, device=x.device)
        if mats is None:  # pixel basis
            q[rows, idx] = 1.0
            return q.view_as(x)
        mh, mw = mats  # (H, H), (W, W): coefficient (ch, u, v) -> mh[u] outer mw[v] in ch
        ch, rem = torch.div(idx, h * w, rounding_mode="floor"), idx % (h * w)
        u, v = torch.div(rem, w, rounding_mode="floor"), rem % w
        q = q.view_as(x)
        q[rows, ch] = mh[u].unsqueeze(2) * mw[v].unsqueeze(1)  # (B, H, W)
        return q

    # ------------------------------------------------------------ the attack
    def perturb(
        self,
        x: Tensor,
        r: Tensor,
        *,
        mask: Tensor | None,
        generator: torch.Generator | None,
        calls: Calls,
    ) -> Perturbation:
        with torch.no_grad():
            return self._run(x, r, mask, generator, calls)

    def _run(
        self,
        x: Tensor,
        r: Tensor,
        mask: Tensor | None,
        generator: torch.Generator | None,
        calls: Calls,
    ) -> Perturbation:
        b, _c, h, w = x.shape
        order = self._orders(x, mask, generator)  # (B, N)
        mats = None
        if self.basis == "dct":
            _freq, _stride, block = self._dct_setup(h, w)
            opts = dict(dtype=x.dtype, device=x.device)
            mats = (block_dct_matrix(h, min(block, h), **opts), block_dct_matrix(w, min(block, w), **opts))
        keep = torch.ones_like(x) if mask is None else mask.expand_as(x)

        def image(d: Tensor) -> Tensor:
            return torch.clamp(x + keep * d, 0.0, 1.0)

        obj_clean = None
        if self.reference == "gt":
            obj_clean = calls.value(x, r)  # (B,)
            obj = obj_clean.clone()
        else:
            obj = self._objective_fn(r, r)  # d(f(x), f(x)): no query needed
        delta = torch.zeros_like(x)  # linear perturbation before mask and clipping
        for k in range(min(self.iterations, order.shape[1])):
            step = self.step * self._directions(order[:, k], x, mats)  # (B, C, H, W)
            todo = torch.ones(b, dtype=torch.bool, device=x.device)
            for sign in (1.0, -1.0):
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                # The whole batch is queried (the model call may carry per-image side inputs,
                # e.g. PSF codes, bound to the batch); images already done keep their delta.
                cand = delta + sign * step * todo.view(-1, 1, 1, 1)
                value = calls.value(image(cand), r)
                better = (value > obj) & todo  # NaN never wins
                delta[better] = cand[better]
                obj[better] = value[better]
                todo &= ~better
        return Perturbation(image(delta), obj, obj_clean)
