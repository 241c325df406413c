"""DISCNet's paper preset against the authors' released code (github.com/jnjaby/DISCNet).

The released parameter names are written out here from ``basicsr/models/archs/discnet_arch.py``
(``conv_block`` = Sequential(conv, act); ``ResBlock`` = conv1, conv2; ``dynamic_kernel*`` =
conv_block + PReLU, two ResBlocks, 1x1 conv_block + PReLU; ``upconv`` = conv, PixelShuffle,
LeakyReLU), independently of our module names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_official_checkpoint
from udcguard.models import DISCNet, build_restorer


def _released_keys() -> list[str]:
    res = lambda stem: [f"{stem}.conv{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    keys: list[str] = []
    for pre in ("", "k"):  # restoration branch, kernel-prediction branch
        for s in (1, 2, 3):
            keys += [f"{pre}conv_{s}1.0.weight", f"{pre}conv_{s}1.0.bias"]
            keys += res(f"{pre}conv_{s}2") + res(f"{pre}conv_{s}3")
    for s in (2, 1):
        keys += [f"upconv_{s}1.0.weight", f"upconv_{s}1.0.bias"] + res(f"upconv_{s}2") + res(f"upconv_{s}3")
    for d in ("1", "2", ""):
        stem = f"dynamic_kernel{d}"
        keys += [f"{stem}.0.weight", f"{stem}.0.bias", f"{stem}.1.weight"]  # conv + PReLU
        keys += res(f"{stem}.2") + res(f"{stem}.3")
        keys += [f"{stem}.4.weight", f"{stem}.4.bias", f"{stem}.5.weight"]  # 1x1 conv + PReLU
    return keys + ["final_conv.0.weight", "final_conv.0.bias"]


def test_released_names_map_one_to_one_onto_the_paper_preset() -> None:
    model = build_restorer("discnet", size="paper", cond_dim=5)
    released = _released_keys()
    mapped = [DISCNet.official_key(k) for k in released]
    assert len(set(mapped)) == len(released)
    assert set(mapped) == set(model.state_dict())
    assert DISCNet.official_key("dynamic_kernel.5.weight") == "filter_gens.2.5.weight"
    assert DISCNet.official_key("module.conv_23.conv2.bias") == "encoder.stages.1.3.conv2.bias"


def _released_checkpoint(model: DISCNet, path: Path, wrap: str | None = "params") -> None:
    ours = model.state_dict()
    state = {k: ours[DISCNet.official_key(k)].clone() for k in _released_keys()}
    torch.save({wrap: state} if wrap else state, path)


@pytest.mark.parametrize("wrap", ["params", None])
def test_released_checkpoint_loads_and_reproduces_outputs(tmp_path: Path, wrap: str | None) -> None:
    torch.manual_seed(0)
    source = build_restorer("discnet", size="paper", cond_dim=5).eval()
    path = tmp_path / "net_g_latest.pth"
    _released_checkpoint(source, path, wrap)
    torch.manual_seed(1)
    fresh = build_restorer("discnet", size="paper", cond_dim=5).eval()
    loaded = load_official_checkpoint(fresh, path)
    assert len(loaded) == len(source.state_dict())
    x, c = torch.rand(1, 3, 20, 24), torch.randn(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, c), source(x, c), rtol=0, atol=0)


def test_released_checkpoint_of_another_size_is_rejected(tmp_path: Path) -> None:
    model = build_restorer("discnet", size="paper", cond_dim=5)
    path = tmp_path / "bad.pth"
    state = {k: model.state_dict()[DISCNet.official_key(k)].clone() for k in _released_keys()}
    state["conv_11.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save({"params": state}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UdcGuardError, match=r"bad\.pth.*other shapes.*encoder\.stages\.0\.0\.weight"):
        load_official_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    small = build_restorer("discnet", size="small", cond_dim=5)
    _released_checkpoint(model, path)
    with pytest.raises(UdcGuardError, match="missing|unexpected"):
        load_official_checkpoint(small, path)


def test_released_activations() -> None:
    model = build_restorer("discnet", size="paper", cond_dim=5)
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert len(prelus) == 6 and all(p.weight.item() == pytest.approx(0.2) for p in prelus)
    assert isinstance(model.final_act, torch.nn.LeakyReLU)
    assert isinstance(build_restorer("discnet", size="small").final_act, torch.nn.Identity)
