"""The synthesize stage end to end (Prefect flow on a temporary server, MLflow in tmp)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO
from udcguard.config import params_from_dict
from udcguard.io.atomic import sha256_file, staging_dir
from udcguard.io.manifest import load_manifest

SPLITS = ("train", "val", "test")


def _run(params: dict, data_dir: Path) -> dict:
    from flows.synthesize import synthesize

    params_from_dict(params)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    pfile = data_dir.parent / f"{data_dir.name}-params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    return synthesize(params_path=str(pfile), data_dir=str(data_dir))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(prefect_harness, tmp_path_factory) -> Path:
    from tests.conftest import TINY

    data = tmp_path_factory.mktemp("made") / "data"
    _run(TINY, data)
    return data


def test_psf_bank_contract(made: Path) -> None:
    codes = json.loads((made / "psf" / "codes.json").read_text())
    assert codes["names"] == ["toled", "toled-v1", "poled"]
    assert np.load(made / "psf" / "codes.npy").shape == (3, 3)
    for name in codes["names"]:
        psf = np.load(made / "psf" / f"{name}.npy")
        assert psf.shape == (15, 15, 3) and psf.dtype == np.float32
        np.testing.assert_allclose(psf.sum(axis=(0, 1)), 1.0, atol=1e-5)
        meta = json.loads((made / "psf" / f"{name}.json").read_text())
        assert meta["name"] == name
    assert Image.open(made / "psf" / "preview.png").size[0] > 100


def test_pairs_contract(made: Path) -> None:
    scenes, groups = {}, {}
    for split in SPLITS:
        m = load_manifest(made / "udc" / split / "manifest.json")
        scenes[split] = {p.scene for p in m.pairs}
        groups[split] = set(m.groups)
        raw = json.loads((made / "udc" / split / "manifest.json").read_text())
        assert raw["groups"] == sorted({p["group"] for p in raw["pairs"]})  # written, not a fallback
        for rec in m.pairs:
            motorcycle = rec.scene.startswith("photo:motorcycle_")
            assert rec.group == ("photo:motorcycle" if motorcycle else rec.scene)
        assert m.crop_px == 32 and m.split == split and len(m.pairs) >= 1
        for rec in m.pairs:
            for key in ("gt", "lq"):
                f = made / "udc" / split / getattr(rec, key)
                assert sha256_file(f) == rec.sha256[key]
            gt, lq = np.load(made / "udc" / split / rec.gt), np.load(made / "udc" / split / rec.lq)
            assert gt.shape == lq.shape == (32, 32, 3) and gt.dtype == np.float32
            assert 0.0 <= lq.min() and lq.max() <= 500.0 and 0.0 <= gt.min()
            assert not np.array_equal(gt, lq)
    assert not (scenes["train"] & scenes["val"]) and not (scenes["train"] & scenes["test"])
    assert not (scenes["val"] & scenes["test"])
    assert sum(map(len, groups.values())) == len(set().union(*groups.values()))  # no group in two splits
    assert Image.open(made / "udc" / "preview.png").size[0] > 300
    assert not staging_dir(made / "udc").exists() and not staging_dir(made / "psf").exists()


def test_flare_is_present(made: Path) -> None:
    """Light sources (>= 10 before the clip) spread energy: lq is brighter around them."""
    m = load_manifest(made / "udc" / "train" / "manifest.json")
    ratios = []
    for rec in m.pairs:
        gt, lq = np.load(made / "udc" / "train" / rec.gt), np.load(made / "udc" / "train" / rec.lq)
        dark = gt.mean(-1) < 0.05
        if dark.sum() > 20:
            ratios.append(lq.mean(-1)[dark].mean() / max(gt.mean(-1)[dark].mean(), 1e-6))
    assert ratios and max(ratios) > 1.5


def test_mlflow_run_recorded(made: Path) -> None:
    import mlflow

    exp = mlflow.get_experiment_by_name("tests")
    runs = mlflow.search_runs([exp.experiment_id], filter_string="tags.`udcguard.stage` = 'synthesize'")
    assert len(runs) >= 1
    row = runs.iloc[0]
    assert row["params.psf.kernel_size"] == "15"
    assert row["tags.mlflow.source.git.commit"]
    assert row["metrics.psfs"] == 3
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(row["run_id"])}
    assert {"preview.png", "psf_preview.png"} <= arts


def test_deterministic_and_resumes_after_kill(made: Path, tmp_path: Path, monkeypatch) -> None:
    import tasks.synthesize as ts
    from tests.conftest import TINY

    calls = {"n": 0}
    real = ts.save_json

    def dying_save_json(path, obj):
        if "records" in str(path):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt("killed")
        return real(path, obj)

    monkeypatch.setattr(ts, "save_json", dying_save_json)
    with pytest.raises(BaseException, match="killed"):
        _run(TINY, tmp_path / "data")
    monkeypatch.undo()
    assert not (tmp_path / "data" / "udc").exists()
    partial = list((staging_dir(tmp_path / "data" / "udc") / "train" / "records").glob("*.json"))
    assert len(partial) == 3
    _run(TINY, tmp_path / "data")
    assert _tree(tmp_path / "data") == _tree(made)  # resumed run == clean run, byte for byte


def test_cli_bad_scene_file_one_line_error_no_outputs(prefect_harness, tiny: dict, tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(scenes / "ok.png")
    (scenes / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    tiny["scenes"]["folder"] = str(scenes)
    pfile = tmp_path / "p.yaml"
    pfile.write_text(yaml.safe_dump(tiny))
    r = subprocess.run([sys.executable, "-m", "flows", "synthesize", "--params", str(pfile),
                        "--data-dir", str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "broken.png" in last
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "psf").exists() and not (tmp_path / "data" / "udc").exists()
    assert not list((tmp_path / "data").glob(".*.partial")) if (tmp_path / "data").exists() else True


def test_scene_smaller_than_crop_fails_before_outputs(prefect_harness, tiny: dict, tmp_path: Path) -> None:
    from udcguard.errors import ImageError

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(scenes / "tiny.png")
    tiny["scenes"].update(folder=str(scenes), photos=False)
    with pytest.raises(ImageError, match=r"tiny\.png: 40x20 px scene .* smaller than dataset\.crop_px=32"):
        _run(tiny, tmp_path / "data")
    assert not (tmp_path / "data" / "psf").exists() and not (tmp_path / "data" / "udc").exists()


def test_measured_psf_bank(prefect_harness, tiny: dict, tmp_path: Path) -> None:
    """A DISCNet-format measured PSF (.npy, (H, W, 3)) joins the bank with its variants."""
    yy, xx = np.mgrid[-40:41, -40:41]
    psf = np.stack([np.exp(-(xx**2 + (yy / s) ** 2) / 8.0) for s in (1.0, 1.5, 2.0)], -1)
    np.save(tmp_path / "zte.npy", psf * 7.0)
    tiny["psf"]["measured"] = [{"name": "zte", "path": str(tmp_path / "zte.npy"), "variants": 2}]
    _run(tiny, tmp_path / "data")
    names = json.loads((tmp_path / "data" / "psf" / "codes.json").read_text())["names"]
    assert names[-3:] == ["zte", "zte-v1", "zte-v2"]
    for n in names[-3:]:
        k = np.load(tmp_path / "data" / "psf" / f"{n}.npy")
        assert k.shape == (15, 15, 3)
        np.testing.assert_allclose(k.sum(axis=(0, 1)), 1.0, atol=1e-5)


def test_bad_measured_psf_names_file(prefect_harness, tiny: dict, tmp_path: Path) -> None:
    from udcguard.errors import PSFError

    bad = np.ones((9, 9, 3))
    bad[4, 4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    tiny["psf"]["measured"] = [{"name": "m", "path": str(tmp_path / "nan.npy")}]
    with pytest.raises(PSFError, match=r"nan\.npy: .*NaN"):
        _run(tiny, tmp_path / "data")
    assert not (tmp_path / "data" / "psf").exists()
    assert not staging_dir(tmp_path / "data" / "psf").exists()
