"""Model directories, training states and external state_dicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import (
    load_external_state_dict,
    load_state,
    load_train_state,
    save_model,
    save_train_state,
)


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))


def test_model_round_trip(tmp_path: Path) -> None:
    net = _net(0)
    net.train()
    net(torch.rand(2, 3, 8, 8))  # move the BatchNorm running stats off their defaults
    net.eval()
    save_model(net, tmp_path / "m", {"arch": "tiny", "kwargs": {"width": 4}})
    state, spec = load_state(tmp_path / "m")
    assert spec == {"arch": "tiny", "kwargs": {"width": 4}}
    other = _net(1)
    other.load_state_dict(state)
    other.eval()
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(net(x), other(x))


def test_model_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UdcGuardError, match=r"spec\.json: model spec not found"):
        load_state(tmp_path / "missing")
    save_model(_net(0), tmp_path / "m", {})
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UdcGuardError, match=r"model\.safetensors: corrupt"):
        load_state(tmp_path / "m")


def test_train_state_round_trip_weights_only(tmp_path: Path) -> None:
    net = _net(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    net(torch.rand(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    gen = torch.Generator().manual_seed(5)
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "step": 1, "generator": gen.get_state(), "history": {"loss": [0.5], "lr": [1e-3]}}
    path = tmp_path / "ckpt" / "train_state.pt"
    assert load_train_state(path) is None
    save_train_state(path, state)
    back = torch.load(path, weights_only=True)  # what load_train_state does
    assert load_train_state(path) is not None
    assert back["step"] == 1 and back["history"] == {"loss": [0.5], "lr": [1e-3]}
    assert all(torch.equal(back["model"][k], v) for k, v in net.state_dict().items())
    g2 = torch.Generator()
    g2.set_state(back["generator"])
    assert torch.equal(torch.rand(3, generator=g2), torch.rand(3, generator=gen))
    opt2 = torch.optim.Adam(_net(1).parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    with pytest.raises(TypeError, match="weights_only"):
        save_train_state(path, {"bad": object()})
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UdcGuardError, match=r"train_state\.pt: corrupt"):
        load_train_state(path)


def test_external_state_dict_key_mapping(tmp_path: Path) -> None:
    net = _net(0)
    wrapped = {f"module.body.{k}": v for k, v in net.state_dict().items()}
    st = tmp_path / "ext.safetensors"
    save_file({k: v.contiguous() for k, v in wrapped.items()}, st)
    state = load_external_state_dict(st, {"module.body.": "", "module.": "other."})
    assert set(state) == set(net.state_dict())
    _net(1).load_state_dict(state)

    pth = tmp_path / "ext.pth"
    torch.save({"params_ema": wrapped, "iter": 3}, pth)
    with pytest.raises(UdcGuardError, match="subkey"):
        load_external_state_dict(pth, None)
    dropped = load_external_state_dict(
        pth, lambda k: None if "running" in k else k.removeprefix("module.body."), subkey="params_ema"
    )
    assert "1.weight" in dropped and not any("running" in k for k in dropped)
    with pytest.raises(UdcGuardError, match="two entries"):
        load_external_state_dict(st, lambda k: "same")
    with pytest.raises(UdcGuardError, match=r"nope\.pth: weights file not found"):
        load_external_state_dict(tmp_path / "nope.pth", None)
