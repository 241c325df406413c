"""Split loading, derived input sets, and augmented batch sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from udcguard.errors import UdcGuardError
from udcguard.io.atomic import save_json, save_npy
from udcguard.io.datasets import TensorPairs, load_inputs, load_split, save_inputs
from udcguard.train.augment import sample_batch

PSFS = ["toled", "poled", "poled-v1"]
CODES = np.arange(len(PSFS) * 4, dtype=np.float32).reshape(len(PSFS), 4)


def make_split(root: Path, n: int = 3, size: int = 12) -> tuple[Path, Path, list[np.ndarray]]:
    """A split with ``n`` random HDR pairs in the data/udc format, and a PSF code dir."""
    rng = np.random.default_rng(0)
    split, psf = root / "train", root / "psf"
    pairs, gts = [], []
    for i in range(n):
        pid = f"train-{i:05d}"
        gt = (rng.random((size, size, 3)) * 5).astype(np.float32)
        lq = (gt * 0.5 + rng.random((size, size, 3))).astype(np.float32)
        sha = {"gt": save_npy(split / "gt" / f"{pid}.npy", gt), "lq": save_npy(split / "lq" / f"{pid}.npy", lq)}
        pairs.append({"id": pid, "gt": f"gt/{pid}.npy", "lq": f"lq/{pid}.npy", "scene": f"photo:x_{i % 2}",
                      "group": "photo:x", "psf": PSFS[(n - 1 - i) % len(PSFS)], "crop": [0, 0, size, size], "seed": [0, i], "sha256": sha})
        gts.append(gt)
    save_json(split / "manifest.json", {"version": 1, "split": "train", "seed": 0, "dtype": "float32",
                                        "crop_px": size, "pairs": pairs})
    save_npy(psf / "codes.npy", CODES)
    save_json(psf / "codes.json", {"names": PSFS, "dim": 4})
    return split, psf, gts


def test_load_split_tonemaps_and_attaches_codes(tmp_path: Path) -> None:
    split, psf, gts = make_split(tmp_path)
    pairs = load_split(split, psf_dir=psf)
    assert len(pairs) == 3 and pairs.ids == ("train-00000", "train-00001", "train-00002")
    assert pairs.lq.shape == pairs.gt.shape == (3, 3, 12, 12) and pairs.gt.dtype == torch.float32
    expected = gts[1] / (gts[1] + 0.25)  # (H, W, 3) -> CHW
    np.testing.assert_allclose(pairs.gt[1].permute(1, 2, 0).numpy(), expected, rtol=1e-6)
    assert 0 <= float(pairs.lq.min()) and float(pairs.lq.max()) < 1
    assert pairs.cond is not None and pairs.cond.shape == (3, 4)
    # pair i uses PSFS[(2 - i) % 3] -> codes row by name, not by position
    for i in range(3):
        np.testing.assert_array_equal(pairs.cond[i].numpy(), CODES[PSFS.index(PSFS[(2 - i) % 3])])
    assert load_split(split, max_items=2).cond is None and len(load_split(split, max_items=2)) == 2
    assert pairs.groups == ("photo:x",) * 3


def test_load_split_groups_of_old_manifests_are_scenes(tmp_path: Path) -> None:
    split, _, _ = make_split(tmp_path)
    m = json.loads((split / "manifest.json").read_text())
    for rec in m["pairs"]:
        del rec["group"]
    save_json(split / "manifest.json", m)
    assert load_split(split).groups == ("photo:x_0", "photo:x_1", "photo:x_0")


def test_load_split_errors_name_the_file(tmp_path: Path) -> None:
    split, _, _ = make_split(tmp_path)
    bad = split / "lq" / "train-00001.npy"
    arr = np.load(bad)
    arr[0, 0, 0] += 1.0
    np.save(bad, arr)
    with pytest.raises(UdcGuardError, match=r"train-00001\.npy: sha256 mismatch"):
        load_split(split)
    load_split(split, verify=False)  # fast path skips hashing
    with pytest.raises(UdcGuardError, match=r"manifest\.json: manifest not found"):
        load_split(tmp_path / "nowhere")
    (split / "gt" / "train-00002.npy").unlink()
    with pytest.raises(UdcGuardError, match=r"train-00002\.npy: file not found"):
        load_split(split, verify=False)


def test_load_split_unknown_psf_and_shape_mismatch(tmp_path: Path) -> None:
    split, psf, _ = make_split(tmp_path)
    save_json(psf / "codes.json", {"names": ["toled", "poled", "other"], "dim": 4})
    with pytest.raises(UdcGuardError, match=r"unknown PSF 'poled-v1'"):
        load_split(split, psf_dir=psf)
    save_npy(split / "gt" / "train-00001.npy", np.ones((10, 12, 3), np.float32))
    with pytest.raises(UdcGuardError, match=r"train-00001\.npy: shape \(10, 12, 3\)"):
        load_split(split, verify=False)


def test_subset_and_concat() -> None:
    pairs = _pairs(4)
    sub = pairs.subset([3, 1])
    assert sub.ids == ("p3", "p1") and torch.equal(sub.lq[0], pairs.lq[3])
    assert sub.groups == ("g1", "g1") and pairs.subset(torch.tensor([2, 0])).groups == ("g0", "g0")
    both = pairs.concat(sub)
    assert len(both) == 6 and both.cond is not None and both.cond.shape == (6, 2)
    assert both.groups == ("g0", "g1", "g0", "g1", "g1", "g1")
    plain = TensorPairs(lq=sub.lq, gt=sub.gt, cond=None, ids=sub.ids)
    assert plain.groups == ("p3", "p1")  # no groups given: each pair is its own
    with pytest.raises(ValueError, match="1 groups for 2 pairs"):
        TensorPairs(lq=sub.lq, gt=sub.gt, cond=None, ids=sub.ids, groups=("g",))
    with pytest.raises(ValueError):
        pairs.concat(TensorPairs(lq=sub.lq, gt=sub.gt, cond=None, ids=sub.ids))


def test_inputs_round_trip(tmp_path: Path) -> None:
    lq = torch.rand(2, 3, 8, 8)
    out = tmp_path / "adv" / "pgd"
    save_inputs(out, lq, ["a", "b"], {"attack": "pgd", "eps": 4 / 256})
    back, ids, extra = load_inputs(out)
    assert torch.equal(back, lq) and ids == ("a", "b") and extra == {"attack": "pgd", "eps": 4 / 256}
    save_inputs(out, lq[:1], ["a"], {})  # replaces the set, leaves no temporaries
    assert load_inputs(out)[1] == ("a",)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pgd"]
    with pytest.raises(ValueError, match="reserved"):
        save_inputs(out, lq, ["a", "b"], {"ids": 1})
    np.save(out / "inputs.npy", np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(UdcGuardError, match=r"inputs\.npy: sha256 mismatch"):
        load_inputs(out)


def _pairs(n: int, size: int = 16) -> TensorPairs:
    g = torch.Generator().manual_seed(1)
    lq = torch.rand(n, 3, size, size, generator=g)
    return TensorPairs(lq=lq, gt=lq.clone(), cond=torch.rand(n, 2, generator=g), ids=tuple(f"p{i}" for i in range(n)),
                       groups=tuple(f"g{i % 2}" for i in range(n)))


def test_sample_batch_shapes_and_determinism() -> None:
    pairs = _pairs(5)
    a = sample_batch(pairs, batch_size=6, crop_px=8, generator=torch.Generator().manual_seed(3), jitter=0.1)
    b = sample_batch(pairs, batch_size=6, crop_px=8, generator=torch.Generator().manual_seed(3), jitter=0.1)
    c = sample_batch(pairs, batch_size=6, crop_px=8, generator=torch.Generator().manual_seed(4), jitter=0.1)
    assert a[0].shape == a[1].shape == (6, 3, 8, 8) and a[2] is not None and a[2].shape == (6, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="crop_px"):
        sample_batch(pairs, batch_size=1, crop_px=17, generator=torch.Generator())


def test_sample_batch_keeps_pairs_aligned() -> None:
    pairs = _pairs(3)  # lq == gt
    lq, gt, _ = sample_batch(pairs, batch_size=32, crop_px=8, generator=torch.Generator().manual_seed(0), jitter=0.2)
    assert torch.equal(lq, gt)
    # every crop is a (possibly flipped) window of some source image
    lq, _, _ = sample_batch(pairs, batch_size=32, crop_px=8, generator=torch.Generator().manual_seed(0))
    windows = pairs.lq.unfold(2, 8, 1).unfold(3, 8, 1)  # (N, 3, 9, 9, 8, 8)
    flipped = {tuple(torch.flip(w, dims).flatten().tolist())
               for dims in [(), (-1,), (-2,), (-1, -2)] for w in windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 8, 8)}
    assert all(tuple(x.flatten().tolist()) in flipped for x in lq)


def test_sample_batch_jitter_bounds() -> None:
    ones = torch.full((2, 3, 4, 4), 0.5)
    pairs = TensorPairs(lq=ones, gt=ones.clone(), cond=None, ids=("a", "b"))
    lq, gt, cond = sample_batch(pairs, batch_size=64, crop_px=None, generator=torch.Generator().manual_seed(0),
                                flips=False, jitter=0.1)
    gain = lq / 0.5
    assert cond is None and torch.equal(lq, gt)
    assert float(gain.min()) >= 0.9 - 1e-6 and float(gain.max()) <= 1.1 + 1e-6 and float(gain.std()) > 0.01
    assert torch.equal(gain, gain[..., :1, :1].expand_as(gain))  # one gain per image and channel
    bright = TensorPairs(lq=torch.ones(1, 3, 4, 4), gt=torch.ones(1, 3, 4, 4), cond=None, ids=("c",))
    assert float(sample_batch(bright, batch_size=8, crop_px=4, generator=torch.Generator(), jitter=0.3)[0].max()) <= 1.0
