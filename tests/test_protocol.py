"""The evaluation protocol's labels and subsets (design.md sections 3-4), without running a stage."""

from __future__ import annotations

import copy

import pytest
import torch

from tasks.attack import set_name, set_size, subset_indices, surrogate_name, targets
from tasks.evaluate import attack_sets, expected_keys
from tasks.purification import finetune_t_stars
from tests.conftest import REPO, TINY
from udcguard.config import load_params, params_from_dict
from udcguard.errors import ConfigError
from udcguard.evaluation import setting_of
from udcguard.io.datasets import TensorPairs


@pytest.mark.parametrize(("method", "defence", "target", "setting"), [
    ("none", "purify", "base", "clean"),
    ("pgd_linf", "none", "base", "white-box"),
    ("pgd_linf", "purify", "base", "gray-box"),
    ("pgd_linf", "purify+finetune", "finetuned", "gray-box"),   # the attacker knows the deployed restorer
    ("pgd_linf", "purify+finetune", "base", "transfer"),        # crafted on another model: labelled so
    ("transfer", "none", "base", "transfer"),
    ("transfer", "purify", "base", "transfer"),
])
def test_settings(method: str, defence: str, target: str, setting: str) -> None:
    assert setting_of(method, defence, target) == setting


def test_default_profile_rows() -> None:
    params = load_params(REPO / "params.yaml")
    keys = expected_keys(params)
    specs = {s.id: s for s in params.attack.attacks}
    assert targets(specs["transfer"]) == ("base",) and targets(specs["simba"]) == ("base",)
    assert targets(specs["pgd_linf"]) == ("base", "finetuned")
    for r in params.restorers:
        mine = {k for k in keys if k[0] == r.name}
        gray_ft = {k[1:3] for k in mine if k[3] == "purify+finetune" and k[4] == "gray-box"}
        assert ("pgd_linf", 8.0) in gray_ft and ("simba", 4.0) not in gray_ft
        assert (r.name, "simba", 4.0, "purify+finetune", "transfer") in mine
        assert (r.name, "lpips_pgd[lpips_rand]", 8.0, "none", "white-box") in mine  # named by what it used
        assert {k[4] for k in mine} == {"clean", "white-box", "gray-box", "transfer", "adaptive-bpda",
                                        "adaptive-eot", "adaptive-full"}
    assert any(d.startswith("finetuned~") for d, *_ in attack_sets(params))
    assert set_name("pgd_linf", 8, "finetuned") == "finetuned~pgd_linf.eps_8"


def test_lpips_auto_uses_true_lpips_when_weights_are_given(tmp_path) -> None:
    data = copy.deepcopy(TINY)
    data["attack"]["attacks"]["lp"] = {"attack": "pgd_linf", "eps": [8], "objective": "lpips_auto"}
    params = params_from_dict(data)
    spec = params.attack.spec("lp")
    assert params.objective_of(spec) == "lpips_rand" and params.attack_label(spec) == "lp[lpips_rand]"
    for f in ("b.pth", "l.pth"):
        (tmp_path / f).write_bytes(b"x")
    data["lpips"] = {"net": "alex", "backbone_path": str(tmp_path / "b.pth"), "lin_path": str(tmp_path / "l.pth")}
    params = params_from_dict(data)
    assert params.objective_of(spec) == "lpips" and params.attack_label(spec) == "lp[lpips]"
    assert params.attack_label(params.attack.spec("pgd_linf")) == "pgd_linf"  # the matrix's default objective


def test_transfer_needs_another_restorer() -> None:
    data = copy.deepcopy(TINY)
    data["restorers"] = {"unet": {"arch": "unet", "size": "tiny"}}
    data["attack"]["attacks"]["tr"] = {"attack": "transfer", "eps": [8]}
    with pytest.raises(ConfigError, match=r"attack\.attacks\.tr: a transfer attack needs a surrogate restorer"):
        params_from_dict(data)
    data["restorers"]["discnet"] = {"arch": "discnet", "size": "tiny"}
    data["attack"]["attacks"]["tr"]["options"] = {"surrogate": "unet"}
    params = params_from_dict(data)
    spec = params.attack.spec("tr")
    assert surrogate_name(params, spec, "discnet") == "unet"
    assert surrogate_name(params, spec, "unet") == "discnet"  # never the target itself


def test_subsets_are_stratified_not_the_first_ids() -> None:
    import torch

    groups = tuple(g for g in "aaabbbcccddd")  # scene-contiguous, as the manifests are
    pairs = TensorPairs(lq=torch.zeros(12, 3, 4, 4), gt=torch.zeros(12, 3, 4, 4), cond=None,
                        ids=tuple(f"test-{i:05d}" for i in range(12)), groups=groups)
    params = params_from_dict(TINY)
    idx = subset_indices(params, pairs, 4)
    assert len(idx) == 4 and {groups[i] for i in idx} == {"a", "b", "c", "d"} and idx != [0, 1, 2, 3]
    assert subset_indices(params, pairs, None) == list(range(12))


@pytest.mark.parametrize(("own", "stage", "size"), [(None, None, None), (8, None, 8), (None, 5, 5), (8, 5, 5), (4, 5, 4)])
def test_attack_sets_stay_within_the_clean_set(own, stage, size) -> None:
    assert set_size(own, stage) == size
    params = params_from_dict(copy.deepcopy(TINY))
    groups = tuple(f"g{i % 4}" for i in range(12))
    pairs = TensorPairs(lq=torch.zeros(12, 3, 4, 4), gt=torch.zeros(12, 3, 4, 4), cond=None,
                        ids=tuple(f"id{i}" for i in range(12)), groups=groups)
    assert set(subset_indices(params, pairs, set_size(own, stage))) <= set(subset_indices(params, pairs, stage))


def test_finetune_strengths_follow_the_selected_t_star(tmp_path) -> None:
    from tasks.common import Paths

    data = copy.deepcopy(TINY)
    data["purify"]["t_star"] = "auto"
    data["finetune"]["t_stars"] = "auto"
    data["finetune"]["t_star_factors"] = [0.5, 1.0, 1.5]
    params, paths = params_from_dict(data), Paths(tmp_path)
    (tmp_path / "tstar.json").write_text('{"t_star": 40}')
    assert finetune_t_stars(params, paths) == [20, 40, 60]
    (tmp_path / "tstar.json").write_text('{"t_star": 0}')
    assert finetune_t_stars(params, paths) == []  # nothing deployed: the clean copies alone
    data["finetune"]["t_stars"] = [3, 5]
    assert finetune_t_stars(params_from_dict(data), paths) == [3, 5]


def test_ddim_steps_never_exceed_t_star() -> None:
    from tasks.purification import sampler_options

    data = copy.deepcopy(TINY)
    data["purify"].update({"sampler": "ddim", "ddim_steps": 10})
    params = params_from_dict(data)
    assert [sampler_options(params, t)["steps"] for t in (0, 3, 10, 40)] == [1, 3, 10, 10]
    assert sampler_options(params_from_dict(TINY), 40)["steps"] is None  # DDPM: t* + 1 calls, no steps
