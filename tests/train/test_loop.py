"""The generic training loop: convergence, exact resume, cosine schedule, callbacks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from udcguard.io.checkpoints import load_train_state, save_train_state
from udcguard.train.loop import fit

W_TRUE = torch.tensor([[1.5, -2.0, 0.5]])


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1))


def _sample(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(32, 3, generator=g)  # (B, 3)
    return x, x @ W_TRUE.T + 0.01 * torch.randn(32, 1, generator=g)  # (B, 1)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


class Killed(Exception):
    pass


def _killed_at(ckpt: Path, step: int, **kw: Any) -> dict[str, Any] | None:
    """Train a fresh model, saving its state at every checkpoint and dying right after ``step``'s; the
    state it left."""

    def save_and_die(state: dict[str, Any]) -> None:
        save_train_state(ckpt, state)
        if state["step"] == step:
            raise Killed

    with pytest.raises(Killed):
        fit(_model(), _loss, _sample, on_checkpoint=save_and_die, **kw)
    return load_train_state(ckpt)


def test_loss_decreases_and_callbacks() -> None:
    model, calls = _model(), []
    hist = fit(model, _loss, _sample, steps=60, lr=1e-2, lr_min=1e-4, seed=1, grad_clip=1.0,
               on_step=lambda step, m: calls.append((step, m)))
    assert [c[0] for c in calls] == list(range(1, 61)) and len(hist["loss"]) == 60
    assert calls[-1][1] == {"loss": hist["loss"][-1], "lr": hist["lr"][-1]}
    assert sum(hist["loss"][-10:]) < 0.2 * sum(hist["loss"][:10])
    assert not model.training


def test_cosine_schedule_reaches_lr_min() -> None:
    states: list[dict[str, Any]] = []
    hist = fit(_model(), _loss, _sample, steps=20, lr=1e-2, lr_min=1e-4, checkpoint_every=100,
               on_checkpoint=states.append)
    lrs = hist["lr"]
    assert lrs[0] == pytest.approx(1e-2) and all(a >= b for a, b in itertools.pairwise(lrs))
    assert lrs[10] == pytest.approx(1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi / 2)) / 2)
    assert [s["step"] for s in states] == [20]  # a final checkpoint even when 20 % 100 != 0
    assert states[0]["scheduler"]["_last_lr"][0] == pytest.approx(1e-4)  # lr after the last step


def test_kill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"steps": 20, "lr": 1e-2, "lr_min": 1e-4, "weight_decay": 1e-4, "grad_clip": 1.0, "seed": 7}
    full = _model()
    hist_full = fit(full, _loss, _sample, **kw)

    state = _killed_at(tmp_path / "train_state.pt", 10, checkpoint_every=5, **kw)
    assert state is not None and state["step"] == 10

    resumed, steps_seen = _model(seed=123), []  # a fresh process: other init, other RNG
    torch.manual_seed(999)
    hist = fit(resumed, _loss, _sample, resume=state, on_step=lambda s, m: steps_seen.append(s), **kw)
    assert steps_seen == list(range(11, 21))
    assert hist == hist_full
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_fit_leaves_global_rng_alone_and_rejects_bad_resume() -> None:
    model, states = _model(), []
    torch.manual_seed(42)
    fit(model, _loss, _sample, steps=4, lr=1e-2, checkpoint_every=2, on_checkpoint=states.append)
    after = torch.rand(1)
    torch.manual_seed(42)
    assert torch.equal(torch.rand(1), after)  # dropout drew from a forked, restored RNG
    assert [s["step"] for s in states] == [2, 4]
    with pytest.raises(ValueError, match="4-step run"):
        fit(_model(), _loss, _sample, steps=8, lr=1e-2, resume=states[0])
    with pytest.raises(ValueError, match="on_checkpoint"):
        fit(_model(), _loss, _sample, steps=4, lr=1e-2, checkpoint_every=2)


def test_amp_on_a_cpu_is_bfloat16_where_amx_runs_it() -> None:
    from udcguard.train.loop import cpu_bf16_available

    kw = {"steps": 30, "lr": 1e-2, "lr_min": 1e-4, "seed": 0, "device": "cpu"}
    fp32 = fit(_model(), _loss, _sample, amp=False, **kw)["loss"]
    mixed = fit(_model(), _loss, _sample, amp=True, **kw)["loss"]
    if not cpu_bf16_available():  # no AMX: amp is plain float32 on a CPU
        assert mixed == fp32
        return
    assert mixed != fp32 and all(math.isfinite(v) for v in mixed)  # bfloat16 rounding, same schedule
    assert abs(mixed[0] - fp32[0]) < 0.05 * fp32[0] and mixed[-1] < 0.5 * mixed[0]  # and it still learns


def test_channels_last_trains_the_same_model_up_to_rounding(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from udcguard.models import build_restorer

    def sample(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(4, 3, 16, 16, generator=g)
        return x, x.flip(-1)

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        assert batch[0].is_contiguous(memory_format=torch.channels_last) == model.nhwc
        return nn.functional.l1_loss(model(batch[0]), batch[1])

    runs = {}
    for nhwc in (False, True):
        torch.manual_seed(0)
        model = build_restorer("unet", size="tiny")
        model.nhwc = nhwc
        runs[nhwc] = (fit(model, loss, sample, steps=5, lr=1e-3, seed=2, channels_last=nhwc), model)
    (h0, m0), (h1, m1) = runs[False], runs[True]
    assert h1["loss"] == pytest.approx(h0["loss"], rel=1e-4)
    assert h1["loss"][0] != h1["loss"][-1]  # it trained
    for (k, a), b in zip(m0.state_dict().items(), m1.state_dict().values(), strict=True):
        assert b.is_contiguous(), k  # back in the default format: safetensors can save it
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
    save_file(m1.state_dict(), str(tmp_path / "m.safetensors"))


def test_ema_returns_the_moving_average_of_the_iterates_and_resumes(tmp_path: Path) -> None:
    """ema_decay d: the model comes back with e_k = d e_{k-1} + (1 - d) w_k (e_0 = the initial weights),
    computed here by hand from the iterates; d = 0 is the last iterate; a killed run resumes it exactly."""
    kw: dict[str, Any] = {"steps": 12, "lr": 1e-2, "lr_min": 1e-4, "seed": 3}
    last, iterates = _model(), []
    fit(last, _loss, _sample, on_step=lambda s, m: iterates.append([p.detach().clone() for p in last.parameters()]),
        **kw)
    d = 0.8
    ema = [p.detach().clone() for p in _model().parameters()]
    for w in iterates:
        ema = [d * e + (1 - d) * wi for e, wi in zip(ema, w, strict=True)]
    averaged = _model()
    fit(averaged, _loss, _sample, ema_decay=d, **kw)
    for a, e, w in zip(averaged.parameters(), ema, iterates[-1], strict=True):
        torch.testing.assert_close(a.detach(), e, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a.detach(), w)  # not the last iterate
    zero = _model()
    fit(zero, _loss, _sample, ema_decay=0.0, **kw)
    assert all(torch.equal(a, b) for a, b in zip(zero.parameters(), last.parameters(), strict=True))

    state = _killed_at(tmp_path / "state.pt", 6, ema_decay=d, checkpoint_every=3, **kw)
    assert state is not None and len(state["ema"]) == len(list(averaged.parameters()))
    resumed = _model(seed=5)
    fit(resumed, _loss, _sample, ema_decay=d, resume=state, **kw)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), averaged.parameters(), strict=True))
    with pytest.raises(ValueError, match="ema_decay"):
        fit(_model(), _loss, _sample, ema_decay=1.0, **kw)
