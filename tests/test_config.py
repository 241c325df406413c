"""params.yaml -> frozen pydantic models: unknown keys and bad values name the key path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from tests.conftest import REPO
from udcguard.config import Params, flatten, load_params, params_from_dict
from udcguard.errors import ConfigError


@pytest.mark.parametrize("name", ["params.yaml", "params-paper.yaml"])
def test_shipped_params_load(name: str) -> None:
    p = load_params(REPO / name)
    assert isinstance(p, Params)
    assert p.psf.kernel_size % 2 == 1


def test_paper_profile_has_ten_psfs_and_256_crops() -> None:
    p = load_params(REPO / "params-paper.yaml")
    n = sum(1 + d.variants for d in p.psf.displays) + sum(1 + m.variants for m in p.psf.measured)
    assert n == 10
    assert p.dataset.crop_px == 256


def _with(tiny: dict, path: str, value: object) -> dict:
    node = tiny
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[keys[-1]] = value
    return tiny


def test_typo_names_key_path(tiny: dict) -> None:
    with pytest.raises(ConfigError, match=r"^src: psf\.wavelenghts: unknown key"):
        params_from_dict(_with(tiny, "psf.wavelenghts", [500]), "src")


@pytest.mark.parametrize(
    ("path", "value", "pattern"),
    [
        ("psf.optics.aperture_mm", -1.0, r"psf\.optics\.aperture_mm: Input should be greater than"),
        ("psf.kernel_size", 64, r"psf\.kernel_size: must be odd"),
        ("psf.displays.0.opaque_transmission", 1.5, r"psf\.displays\.0\.opaque_transmission: Input should be less"),
        ("psf.optics.wavelengths_nm", [[610], [530], [50]], r"psf\.optics\.wavelengths_nm\.2\.0: Input should be greater"),
        ("dataset.crop_px", 2, r"dataset\.crop_px: Input should be greater than or equal to 8"),
        ("dataset.train.scene_fraction", 0.9, r"dataset: train/val/test scene_fraction must sum to 1"),
        ("seed", -1, r"seed: Input should be greater than or equal to 0"),
        ("purify.t_star", 300, r"^params\.yaml: purify\.t_star=300 exceeds the purifier's trained range"),
        ("attack.attacks.pgd_linf.options", {"random_start": False},
         r"attack: attacks\.pgd_linf: random_start=False with reference=.clean_output. cannot move"),
        ("attack.attacks.pgd_linf.attack", "pgd_lnf", r"unknown attack 'pgd_lnf'; valid: .*pgd_linf"),
        ("attack.attacks.pgd_linf.eps", [2, 300], r"attack\.attacks\.pgd_linf: .*1/256 units"),
        ("attack.attacks.pgd_linf.eps", [-1], r"attack\.attacks\.pgd_linf\.eps\.0: Input should be greater than 0"),
        ("attack.attacks.pgd_linf.options", {"stepz": 3}, r"options\.stepz: unknown argument of pgd_linf; valid: .*steps"),
        ("attack.attacks.pgd_linf.options", {"steps": 0}, r"attack: attacks\.pgd_linf: .*steps must be an integer >= 1"),
        ("attack.attacks.pgd_linf.options", {"eps": 0.1}, r"options\.eps: set by the stage"),
        ("attack.attacks.pgd_linf.objective", "ssim2", r"attack\.attacks\.pgd_linf\.objective: Input should be"),
        ("attack.attacks.pgd_linf.objective", "lpips", r"objective lpips needs lpips\.backbone_path .*lpips_rand"),
        ("attack.attacks.cw_l2.eps", [1], r"cw_l2 is unbounded"),
        ("attack.region", "sky", r"attack\.region: Input should be 'full' or 'lights'"),
        ("train.crop_px", 64, r"train\.crop_px=64 exceeds dataset\.crop_px=32"),
        ("finetune.distributed.nproc", 3, r"^params\.yaml: finetune\.distributed\.nproc=3 must divide finetune\.batch_size=4"),
        ("finetune.distributed.nproc", 0, r"^params\.yaml: finetune\.distributed\.nproc: an integer in 1\.\.1024 or auto"),
        ("finetune.distributed.backend", "mpi", r"finetune\.distributed\.backend: Input should be 'auto', 'gloo' or 'nccl'"),
    ],
)
def test_out_of_range_values(tiny: dict, path: str, value: object, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        params_from_dict(_with(tiny, path, value), "params.yaml")


def test_unknown_layout_lists_valid_names(tiny: dict) -> None:
    with pytest.raises(ConfigError, match=r"unknown layout 'tolde'; valid: .*poled.*toled"):
        params_from_dict(_with(tiny, "psf.displays.0.layout", "tolde"))


def test_params_are_frozen(tiny: dict) -> None:
    p = params_from_dict(tiny)
    with pytest.raises(ValidationError):
        p.seed = 4  # type: ignore[misc]


def test_flatten_has_dotted_keys(tiny: dict) -> None:
    flat = flatten(params_from_dict(tiny))
    assert flat["psf.kernel_size"] == "15"
    assert flat["psf.displays.0.layout"] == "toled"
    assert flat["dataset.train.pairs_per_scene"] == "2"


def test_missing_and_invalid_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("psf: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+ invalid YAML"):
        load_params(bad)


def test_cli_reports_one_line_and_exits_nonzero(tmp_path, tiny: dict) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(_with(tiny, "psf.wavelenghts", [1])))
    r = subprocess.run([sys.executable, "-m", "flows", "check-params", "--params", str(f)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {f}: psf.wavelenghts: unknown key"]


def test_cli_set_override(tmp_path, tiny: dict) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(tiny))
    r = subprocess.run([sys.executable, "-m", "flows", "check-params", "--params", str(f),
                        "--set", "dataset.crop_px=48"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["dataset"]["crop_px"] == 48


def test_dvc_yaml_agrees_with_params_and_cli() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    fields = set(Params.model_fields)
    from flows.__main__ import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(data) <= fields
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            assert stage["foreach"] == "${restorers}"
            stage = stage["do"]
            assert "--restorer ${key}" in stage["cmd"]
        for section in stage["params"]:
            top = section.split(".")[0]
            assert top in fields, f"dvc.yaml stage {name} lists unknown params section {section}"
            assert top in data, "DVC needs every listed section in params.yaml"
        assert stage["cmd"].startswith(f"python -m flows {name}")
        assert name in commands
        for dep in stage["deps"]:
            if not dep.startswith(("data/", "reports/")):
                assert (REPO / dep).exists(), dep
    assert {"pipeline", "check-params"} <= commands


def test_the_old_purifier_section_loads_with_a_warning(tiny: dict, tmp_path) -> None:
    new = params_from_dict(tiny)
    old = dict(tiny)
    old["purifier"] = old.pop("diffusion")
    with pytest.warns(FutureWarning, match="'purifier' is deprecated, rename it 'diffusion'"):
        assert params_from_dict(old) == new
    with pytest.raises(ConfigError, match="purifier: the old name of diffusion; give only diffusion"):
        params_from_dict({**tiny, "purifier": tiny["diffusion"]})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny))
    with pytest.warns(FutureWarning, match="--set purifier.steps: section .purifier. is deprecated, use .diffusion."):
        assert load_params(path, {"purifier.steps": 9}).diffusion.steps == 9


def test_cross_section_checks_are_named_validators() -> None:
    names = [n for n in vars(Params) if n.startswith("_") and not n.startswith("__")]
    decorators = Params.__pydantic_decorators__.model_validators
    assert {"_unique_restorer_names", "_attack_sets_can_run", "_timesteps_within_the_purifier",
            "_ranks_divide_the_batch", "_crops_fit", "_renamed_sections"} <= set(decorators), names


def test_a_bare_off_in_yaml_means_off_where_off_is_a_choice(tiny: dict, tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny).replace("panoramas: 'off'", "panoramas: off"))
    assert "panoramas: off\n" in path.read_text() and yaml.safe_load(path.read_text())["scenes"]["panoramas"] is False
    p = load_params(path, {"scenes.wallpapers": False, "evaluate.draw_average": False})  # --set key=off
    assert (p.scenes.panoramas, p.scenes.wallpapers, p.evaluate.draw_average) == ("off", "off", "off")
    with pytest.raises(ConfigError, match="evaluate.device"):  # false is not a choice where off is not
        load_params(path, {"evaluate.device": False})
