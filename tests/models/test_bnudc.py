"""BNUDC: the two branches, the affine transform connection, released-checkpoint compatibility."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_official_checkpoint
from udcguard.models.base import build_restorer, num_parameters
from udcguard.models.bnudc import BNUDC, ShareSepConv, color_affine

#: Parameter names exactly as in the authors' released checkpoints: the trainer saves
#: ``torch.save(DataParallel(BNUDCnet()).state_dict(), "<epoch>_net_bnudc.pth")``.
RELEASED_KEYS = [
    "module.shallow_feat.0.weight",
    "module.shallow_feat.1.conv8.weight_v",
    "module.shallow_feat.1.conv8.weight_g",
    "module.orsnet.orb2.body.5.pre_conv8.weight",
    "module.orsnet.orb3.body.6.weight",
    "module.tail.bias",
    "module.shallow_sub.1.conv.weight",
    "module.encoder_sub.encoder_level3.1.conv4.weight_v",
    "module.encoder_sub.down23.down.1.weight",
    "module.decoder_sub.skip_attn2.pre_conv2.weight",
    "module.decoder_sub.up32.up.1.weight",
    "module.decoder_sub.decoder_level1.0.conv1.weight_g",
    "module.tail_sub.weight",
    "module.box_filter.weight",
]


def _tiny(seed: int = 0) -> BNUDC:
    torch.manual_seed(seed)
    model = build_restorer("bnudc", size="tiny").eval()
    assert isinstance(model, BNUDC)
    return model


def _image(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _perturb_(model: BNUDC, scale: float = 0.05) -> None:
    """Move the weights off their (partly identity) initialisation."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_paper_size_is_the_released_model() -> None:
    # released BNUDCnet() defaults: the module's exact count (no published figure found)
    assert num_parameters(build_restorer("bnudc", size="paper")) == 4_574_559


def test_output_shape_and_cond_is_ignored() -> None:
    model = _tiny()
    for shape in [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 3, 2)]:
        x = _image(shape[0], *shape[2:])
        with torch.no_grad():
            y = model(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    x = _image(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, torch.randn(1, 5)), model(x))
    assert not BNUDC.conditional


def test_two_branches_and_the_low_branch_runs_at_reduced_resolution() -> None:
    model = _tiny()
    x = _image(2, 64, 48)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_m, _i, out):
            shapes[name] = tuple(out.shape)
            if name == "low_out":
                low_out[:] = [out]

        return hook

    model.orsnet.register_forward_hook(record("high"))
    model.shallow_sub.register_forward_hook(record("low"))
    model.encoder_sub.encoder_level3.register_forward_hook(record("low_deepest"))
    model.tail_sub.register_forward_hook(record("low_out"))
    low_out: list[torch.Tensor] = []
    with torch.no_grad():
        model(x)
        alpha, beta = model.high_branch(x)
        gamma, delta = model.low_branch(x)
    cfg = model.config
    assert shapes["high"] == (2, cfg["n_feat_high"], 32, 24)  # high-frequency branch: 1/2
    assert shapes["low"] == (2, cfg["n_feat_low"], 16, 12)  # low-frequency branch: 1/4
    assert shapes["low_deepest"] == (2, cfg["n_feat_low"] + 2 * cfg["scale_feats"], 4, 3)  # 1/16
    assert alpha.shape == beta.shape == delta.shape == x.shape
    assert gamma.shape == (2, 9, 64, 48)
    # gamma, delta: the bilinear x4 upsampling of a 1/4-resolution map (C^2 + C channels)
    assert shapes["low_out"] == (2, 12, 16, 12)
    up = F.interpolate(low_out[0], scale_factor=4, mode="bilinear", align_corners=True)
    torch.testing.assert_close(torch.cat([gamma, delta], 1), up)


def test_output_is_the_low_branch_affine_transform_of_the_high_branch() -> None:
    model = _tiny()
    _perturb_(model)
    x = _image(1, 32, 48)
    with torch.no_grad():
        parts = model.branches(x)
        torch.testing.assert_close(parts["x_high"], x * parts["alpha"] + parts["beta"])
        torch.testing.assert_close(parts["out"], color_affine(parts["x_high"], parts["gamma"], parts["delta"]))
        torch.testing.assert_close(model(x), parts["out"], atol=1e-6, rtol=1e-5)


def test_perturbing_the_low_branch_shifts_and_scales_the_high_branch_output() -> None:
    """Affine transform connection: low-branch delta shifts, gamma rescales the high branch."""
    model = _tiny()
    _perturb_(model)
    x = _image(1, 32, 32)
    with torch.no_grad():
        parts = model.branches(x)
        y = model(x)
        handle = model.tail_sub.register_forward_hook(lambda _m, _i, out: out + _delta_only(out, 0.1))
        y_shift = model(x)
        handle.remove()
        eye = torch.eye(3).reshape(1, 9, 1, 1)
        handle = model.tail_sub.register_forward_hook(lambda _m, _i, out: out + 0.2 * _pad(eye, out))
        y_scale = model(x)
        handle.remove()
    torch.testing.assert_close(y_shift - y, torch.full_like(y, 0.1), atol=1e-5, rtol=0)
    torch.testing.assert_close(y_scale - y, 0.2 * parts["x_high"], atol=1e-5, rtol=1e-4)
    # and perturbing the high branch's features changes the output through that transform
    with torch.no_grad():
        handle = model.orsnet.register_forward_hook(lambda _m, _i, out: out * 1.1)
        assert (model(x) - y).abs().max() > 1e-5
        handle.remove()


def _delta_only(out: torch.Tensor, value: float) -> torch.Tensor:
    add = torch.zeros_like(out)
    add[:, 9:] = value  # channels 9..11: delta
    return add


def _pad(gamma_add: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    add = torch.zeros_like(out)
    add[:, :9] = gamma_add  # channels 0..8: gamma
    return add


def test_color_affine_is_a_per_pixel_matrix() -> None:
    img = torch.rand(2, 3, 4, 5)
    swap = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 2]]).reshape(1, 9, 1, 1).expand(2, 9, 4, 5)
    out = color_affine(img, swap, torch.ones(2, 3, 4, 5))
    torch.testing.assert_close(out, torch.stack([img[:, 1], img[:, 0], 2 * img[:, 2]], 1) + 1)


def test_share_sep_conv_fft_path_equals_the_depthwise_conv() -> None:
    torch.manual_seed(0)
    layer = ShareSepConv(15)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(2, 4, 9, 12)
    ref = F.conv2d(x, layer.weight.expand(4, 1, 15, 15), padding=7, groups=4)
    torch.testing.assert_close(layer(x), ref, atol=1e-4, rtol=1e-4)


def test_released_parameter_names_map_onto_ours() -> None:
    own = build_restorer("bnudc", size="paper").state_dict()
    for key in RELEASED_KEYS:
        assert BNUDC.official_key(key) in own, key
    assert tuple(own["shallow_feat.0.weight"].shape) == (72, 12, 3, 3)
    assert tuple(own["tail_sub.weight"].shape) == (12, 32, 3, 3)
    assert tuple(own["shallow_feat.1.conv8.weight_g"].shape) == (36, 1, 1, 1)


def test_load_a_checkpoint_in_the_released_format(tmp_path: Path) -> None:
    src = _tiny(seed=3)
    _perturb_(src)
    path = tmp_path / "latest_net_bnudc.pth"
    # flat DataParallel state_dict, as the released trainer saves it
    torch.save({f"module.{k}": v.clone() for k, v in src.state_dict().items()}, path)
    model = _tiny(seed=4)
    x = _image(1, 20, 27)
    with torch.no_grad():
        assert not torch.equal(model(x), src(x))
        load_official_checkpoint(model, path)
        assert torch.equal(model(x), src(x))

    bad = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    bad["module.tail_sub.weight"] = bad["module.tail_sub.weight"][:, :-1]
    bad_path = tmp_path / "bad_net_bnudc.pth"
    torch.save(bad, bad_path)
    with pytest.raises(UdcGuardError, match="bad_net_bnudc.pth.*tail_sub.weight"):
        load_official_checkpoint(_tiny(), bad_path)
