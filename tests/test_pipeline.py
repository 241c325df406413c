"""Every stage end to end on tiny sizes under a Prefect test server (pipeline flow)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY
from udcguard.config import params_from_dict


def _write_params(tmp: Path, params: dict) -> Path:
    params_from_dict(params)
    f = tmp / "params.yaml"
    f.write_text(yaml.safe_dump(params))
    return f


@pytest.fixture(scope="module")
def run_dir(prefect_harness, tmp_path_factory) -> Path:
    from flows.pipeline import pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    pfile = _write_params(tmp, TINY)
    pipeline(params_path=str(pfile), data_dir=str(tmp / "data"), reports_dir=str(tmp / "reports"))
    return tmp


def test_models_and_purifier_written(run_dir: Path) -> None:
    from diffusers import UNet2DModel

    for name in ("unet", "discnet"):
        for d in ("models", "finetuned"):
            assert (run_dir / "data" / d / name / "model.safetensors").exists()
            spec = json.loads((run_dir / "data" / d / name / "spec.json").read_text())
            assert spec["arch"] == name and spec["size"] == "tiny"
    unet = UNet2DModel.from_pretrained(run_dir / "data" / "purifier" / "unet", local_files_only=True)
    assert unet.config.in_channels == 3


def test_adversarial_sets_respect_budget(run_dir: Path) -> None:
    from udcguard.io.datasets import load_inputs

    clean, ids, _ = load_inputs(run_dir / "data" / "attacks" / "unet" / "clean")
    for eps in (2, 8):
        adv, ids2, extra = load_inputs(run_dir / "data" / "attacks" / "unet" / f"pgd_linf.eps_{eps}")
        assert list(ids2) == list(ids) and extra["eps"] == eps and extra["method"] == "pgd_linf"
        assert (adv - clean).abs().max() <= eps / 256 + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - clean).abs().max() > 0.5 * eps / 256
        pur, ids3, pextra = load_inputs(run_dir / "data" / "purified" / "unet" / f"pgd_linf.eps_{eps}")
        assert list(ids3) == list(ids) and pextra["t_star"] == 5 and pur.shape == adv.shape
    everything = json.loads((run_dir / "data" / "attacks" / "unet" / "records.json").read_text())
    assert all(r["objective"] >= r["objective_clean"] for r in everything if r["attack"] != "transfer")
    # every set is crafted on the trained and on the fine-tuned restorer (gray-box rows of purify+finetune)
    records = [r for r in everything if r["target"] == "base"]
    crafted_on_ft = [r for r in everything if r["target"] == "finetuned"]
    assert len(crafted_on_ft) == len(records) > 0
    ft, _, ft_extra = load_inputs(run_dir / "data" / "attacks" / "unet" / "finetuned~pgd_linf.eps_8")
    assert ft_extra["target"] == "finetuned" and (ft - clean).abs().max() <= 8 / 256 + 1e-6
    assert not torch.equal(ft, load_inputs(run_dir / "data" / "attacks" / "unet" / "pgd_linf.eps_8")[0])
    by_attack = {a: [r for r in records if r["attack"] == a] for a in ("pgd_linf", "cw_l2", "simba")}
    assert len(by_attack["pgd_linf"]) == 2 * len(ids)
    simba = by_attack["simba"]  # queries only, within its budget of 1 + 2 x 5 iterations
    assert simba and all(r["grads"] == 0 and r["queries"] <= 11 and r["linf"] <= 4 / 256 + 1e-6 for r in simba)
    cw = by_attack["cw_l2"]  # unbounded: recorded at eps 0 with its L2 norm
    assert cw and all(r["eps"] == 0 and r["l2"] > 0 and r["grads"] == 2 * 3 for r in cw)
    assert (run_dir / "data" / "purified" / "unet" / "cw_l2.eps_0" / "manifest.json").exists()


def test_metrics_table_and_report(run_dir: Path) -> None:
    from tasks.evaluate import expected_keys
    from udcguard.config import params_from_dict

    rows = list(csv.DictReader((run_dir / "reports" / "metrics.csv").open()))
    keys = {(r["restorer"], r["attack"], float(r["eps"]), r["defence"], r["setting"]) for r in rows}
    # restorers x (clean x 5 defences + (pgd 2 levels + cw + simba) x (5 defences + purify(-avg)+finetune gray-box
    # on the fine-tuned restorer) + 3 adaptive settings x 4 defended systems (2 of them averaged))
    assert len(keys) == len(rows) == 2 * (5 + 4 * 7 + 3 * 4)
    assert keys == expected_keys(params_from_dict(TINY))
    settings = {(r["attack"], r["defence"], r["setting"]) for r in rows if r["restorer"] == "unet"}
    assert {("pgd_linf", "none", "white-box"), ("pgd_linf", "purify", "gray-box"),
            ("pgd_linf", "purify+finetune", "gray-box"), ("pgd_linf", "purify+finetune", "transfer"),
            ("pgd_linf@adaptive-eot", "purify+finetune", "adaptive-eot"), ("pgd_linf", "purify-avg", "gray-box"),
            ("pgd_linf", "purify-avg+finetune", "gray-box"), ("pgd_linf@adaptive-eot", "purify-avg", "adaptive-eot")} <= settings
    calls = {r["defence"]: int(r["unet_calls"]) for r in rows}  # DDPM from t* = 5: 6 calls a draw, 2 draws averaged
    assert calls == {"none": 0, "purify": 6, "purify+finetune": 6, "purify-avg": 12, "purify-avg+finetune": 12}
    assert all(int(r["n_scenes"]) <= int(r["n_images"]) and float(r["psnr_lo"]) <= float(r["psnr_mean"])
               <= float(r["psnr_hi"]) for r in rows)
    share = [r for r in rows if r["attack"] == "pgd_linf" and r["defence"] != "none"]
    assert share and all(r["recovery_n_images"] for r in share)  # the headline column is filled
    assert all(float(r["psnr_worst_mean"]) <= float(r["psnr_mean"]) + 1e-9 for r in rows)
    assert all(float(r["lpips_rand_mean"]) >= 0 for r in rows)  # no LPIPS weights: the named stand-in
    nested = json.loads((run_dir / "reports" / "metrics.json").read_text())
    assert set(nested) == {"unet", "discnet"}
    assert set(nested["unet"]) == {"none", "pgd_linf", "cw_l2", "simba", "pgd_linf@adaptive-bpda",
                                   "pgd_linf@adaptive-eot", "pgd_linf@adaptive-full"}
    assert set(nested["unet"]["pgd_linf"]) == {"eps_2", "eps_8"}
    per_image = list(csv.DictReader((run_dir / "reports" / "per_image.csv").open()))
    assert len(per_image) == sum(int(r["n_images"]) for r in rows) and all(r["group"] for r in per_image)
    html = (run_dir / "reports" / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "purify+finetune" in html
    assert "Attack matrix" in html and "Attack cost" in html and "simba" in html
    assert "adaptive attacks" in html and "Purification strength t*" in html
    curve = list(csv.DictReader((run_dir / "reports" / "plots" / "psnr_vs_eps.csv").open()))
    assert {float(r["eps"]) for r in curve} == {0.0, 2.0, 8.0}


def test_metrics_match_scikit_image(run_dir: Path) -> None:
    """The table's PSNR/SSIM for the undefended clean row equal scikit-image on the same arrays."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from udcguard.io.restorer_store import load_restorer
    from udcguard.io.datasets import load_split
    from udcguard.train.restorer import predict

    rows = [r for r in csv.DictReader((run_dir / "reports" / "per_image.csv").open())
            if r["restorer"] == "discnet" and r["attack"] == "none" and r["defence"] == "none"]
    split = load_split(run_dir / "data" / "udc" / "test", psf_dir=run_dir / "data" / "psf")
    pairs = split.subset([split.ids.index(r["id"]) for r in rows])
    model = load_restorer(run_dir / "data" / "models" / "discnet", torch.device("cpu"))
    out = predict(model, pairs.lq, pairs.cond).numpy().transpose(0, 2, 3, 1)
    gt = pairs.gt.numpy().transpose(0, 2, 3, 1)
    ref_p = [peak_signal_noise_ratio(g.astype(np.float64), o.astype(np.float64), data_range=1.0) for g, o in zip(gt, out)]
    ref_s = [structural_similarity(g, o, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False) for g, o in zip(gt, out)]
    assert len(rows) == len(ref_p) == 3
    np.testing.assert_allclose([float(r["psnr"]) for r in rows], ref_p, atol=1e-3)
    np.testing.assert_allclose([float(r["ssim"]) for r in rows], ref_s, atol=1e-3)


def test_mlflow_parent_nested_runs_and_registry(run_dir: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("udcguard.kind") == "pipeline"]
    everything = {"synthesize", "train_restorer", "train_purifier", "purify_train", "select_tstar", "attack", "purify",
                  "finetune", "adaptive", "evaluate", "report"}
    children = []
    for p in parents:  # one parent gathers every stage of the pipeline execution
        mine = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        if {r.data.tags["udcguard.stage"] for r in mine} >= everything:
            children = mine
    assert children, "no parent run holds all stages"
    trained = [r for r in children if r.data.tags["udcguard.stage"] == "train_restorer"]
    assert {r.data.tags["restorer"] for r in trained} >= {"unet", "discnet"}
    assert all("train_loss" in client.get_metric_history(r.info.run_id, "train_loss")[0].key for r in trained)
    versions = client.search_model_versions("name = 'udcguard-discnet-finetuned'")
    assert versions and int(versions[0].version) >= 1


def test_tstar_selection_and_purification_draws(run_dir: Path) -> None:
    from udcguard.io.datasets import load_inputs

    info = json.loads((run_dir / "data" / "tstar.json").read_text())
    assert info["mode"] == "fixed" and info["t_star"] == 5  # fixed in params: the selection is only reported
    assert [r["t"] for r in info["curve"]] == [0, 3, 5] and len(info["guided_curve"]) == 3
    balanced = [(0.5 * (r["clean_psnr"] + r["attacked_psnr"]), -r["t"]) for r in info["curve"]]
    assert info["selected"] == info["curve"][balanced.index(max(balanced))]["t"]  # the balanced criterion's argmax
    t0 = info["curve"][0]
    assert t0["clean_psnr"] > t0["attacked_psnr"]  # at t* = 0 the attack is undiminished
    d0, _, m0 = load_inputs(run_dir / "data" / "purified" / "unet" / "pgd_linf.eps_8")
    d1, _, m1 = load_inputs(run_dir / "data" / "purified" / "unet" / "pgd_linf.eps_8~s1")
    assert m0["draw"] == 0 and m1["draw"] == 1 and not torch.equal(d0, d1)  # two purification draws
    records = json.loads((run_dir / "data" / "adaptive" / "unet" / "records.json").read_text())
    assert {r["setting"] for r in records} == {"adaptive-bpda", "adaptive-eot", "adaptive-full"}
    eot = [r for r in records if r["setting"] == "adaptive-eot"]
    bpda = [r for r in records if r["setting"] == "adaptive-bpda"]
    assert eot[0]["grads"] == 2 * bpda[0]["grads"]  # EOT: 2 draws per attack step


def test_averaged_defence_scores_the_mean_of_the_restored_draws(run_dir: Path) -> None:
    """purify-avg (evaluate.draw_average: mean): one output per image, the mean of the restorations of the
    purification draws, recomputed here from the stage's files."""
    from tasks.common import draw_dir
    from udcguard.io.datasets import load_inputs, load_split
    from udcguard.io.restorer_store import load_restorer
    from udcguard.metrics.image import psnr
    from udcguard.train.restorer import predict

    data = run_dir / "data"
    rows = [r for r in csv.DictReader((run_dir / "reports" / "per_image.csv").open())
            if r["restorer"] == "unet" and r["attack"] == "pgd_linf" and float(r["eps"]) == 8.0
            and r["setting"] == "gray-box"]
    avg = {r["id"]: float(r["psnr"]) for r in rows if r["defence"] == "purify-avg"}
    single = {r["id"]: float(r["psnr"]) for r in rows if r["defence"] == "purify"}
    assert {r["draws"] for r in rows if r["defence"] == "purify-avg"} == {"1"} and avg.keys() == single.keys()
    model = load_restorer(data / "models" / "unet")
    outs = []
    for k in range(TINY["purify"]["seeds"]):
        x, ids, _ = load_inputs(data / "purified" / "unet" / draw_dir("pgd_linf.eps_8", k))
        outs.append(predict(model, x, None, batch_size=2))
    split = load_split(data / "udc" / "test", psf_dir=None)
    gt = split.subset([list(split.ids).index(i) for i in ids]).gt
    expected = psnr(torch.stack(outs).mean(0), gt)
    assert [avg[i] for i in ids] == pytest.approx(expected.tolist(), abs=1e-4)
    assert any(abs(avg[i] - single[i]) > 1e-3 for i in ids)  # not the mean of the per-draw PSNRs


def test_evaluate_user_pairs(run_dir: Path, tmp_path: Path) -> None:
    """`evaluate --pairs DIR` scores a folder in the data contract's format."""
    from flows.evaluate import evaluate_flow

    out = tmp_path / "eval"
    evaluate_flow(params_path=str(run_dir / "params.yaml"), data_dir=str(run_dir / "data"),
                  pairs=str(run_dir / "data" / "udc" / "val"), out=str(out))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["defence"] for r in rows} == {"none", "purify", "purify+finetune"}
    assert {r["restorer"] for r in rows} == {"unet", "discnet"}


def test_killed_training_resumes_to_the_same_weights(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Kill train_restorer after its first checkpoint; the rerun resumes and ends bit-identical."""
    import shutil

    import tasks.train as tt
    from flows.train import train_restorer_flow

    data = tmp_path / "data"
    for d in ("psf", "udc"):
        shutil.copytree(run_dir / "data" / d, data / d)
    real = tt.save_train_state
    saved = []

    def save_then_die(path, state):
        real(path, state)
        saved.append(state["step"])
        raise KeyboardInterrupt("killed after checkpoint")

    monkeypatch.setattr(tt, "save_train_state", save_then_die)
    with pytest.raises(BaseException, match="killed"):
        train_restorer_flow("discnet", params_path=str(run_dir / "params.yaml"), data_dir=str(data))
    monkeypatch.undo()
    assert saved == [3] and (data / ".ckpt" / "train-discnet.pt").exists()
    assert not (data / "models" / "discnet").exists()
    train_restorer_flow("discnet", params_path=str(run_dir / "params.yaml"), data_dir=str(data))
    a = (data / "models" / "discnet" / "model.safetensors").read_bytes()
    b = (run_dir / "data" / "models" / "discnet" / "model.safetensors").read_bytes()
    assert a == b
    assert not (data / ".ckpt" / "train-discnet.pt").exists()


def test_external_diffusers_unet_folder_as_purifier(run_dir: Path, tmp_path: Path) -> None:
    """diffusion.unet_path: any local diffusers-format UNet folder is adopted instead of training."""
    from flows.train import train_purifier_flow
    from udcguard.io.purifier_store import load_purifier

    data = tmp_path / "data"
    train_purifier_flow(params_path=str(run_dir / "params.yaml"), data_dir=str(data),
                        overrides={"diffusion.unet_path": str(run_dir / "data" / "purifier" / "unet")})
    x = torch.rand(1, 3, 32, 32)
    a = load_purifier(data / "purifier").purify(x, t_star=3, seeds=[1])
    b = load_purifier(run_dir / "data" / "purifier").purify(x, t_star=3, seeds=[1])
    torch.testing.assert_close(a, b)


def test_restorer_starts_from_an_authors_format_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    """restorers.<name>.weights: a local checkpoint in the authors' format initialises training."""
    from flows.train import train_restorer_flow
    from udcguard.errors import UdcGuardError
    from udcguard.io.checkpoints import load_state
    from udcguard.models import build_restorer

    torch.manual_seed(123)
    source = build_restorer("unet", size="tiny")
    ckpt = tmp_path / "released.pth"  # DataParallel names nested under "state_dict", as trainers save them
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 7}, ckpt)
    data = tmp_path / "data"
    for d in ("psf", "udc"):
        shutil.copytree(run_dir / "data" / d, data / d)
    overrides = {"restorers.unet.weights": str(ckpt), "train.lr": 1e-12, "train.lr_min": 0.0}
    train_restorer_flow("unet", params_path=str(run_dir / "params.yaml"), data_dir=str(data), overrides=overrides)
    state, spec = load_state(data / "models" / "unet")
    assert spec["size"] == "tiny"
    for k, v in source.state_dict().items():  # Adam with lr 1e-12 moves each weight by <= ~1e-11
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-9)
    bad = tmp_path / "discnet.pth"
    torch.save(build_restorer("discnet", size="tiny").state_dict(), bad)
    overrides["restorers.unet.weights"] = str(bad)
    for d in ("psf", "udc"):
        shutil.copytree(run_dir / "data" / d, tmp_path / "d2" / d)
    with pytest.raises(UdcGuardError, match=r"discnet\.pth: checkpoint does not match UNet"):
        train_restorer_flow("unet", params_path=str(run_dir / "params.yaml"), data_dir=str(tmp_path / "d2"),
                            overrides=overrides)
    assert not (tmp_path / "d2" / "models" / "unet").exists()


NEW_ARCHS = ("uformer", "udcunet", "bnudc", "dwformer", "restormer", "nafnet")


def test_every_restorer_runs_through_the_stages(run_dir: Path, tmp_path: Path) -> None:
    """Naming an architecture in params.yaml is all it takes: train, attack, purify, fine-tune, evaluate."""
    from flows.defend import adaptive_flow, attack_flow, purify_flow
    from flows.evaluate import evaluate_flow
    from flows.train import finetune_flow, train_restorer_flow
    from udcguard.models import RESTORERS

    assert set(NEW_ARCHS) | {"unet", "discnet"} == set(RESTORERS.names())
    params = json.loads(json.dumps(TINY))
    params["restorers"] = {a: {"arch": a, "size": "tiny"} for a in NEW_ARCHS}
    # the attack matrix is tested on unet/discnet; here one attack set and one adaptive setting suffice
    params["attack"]["attacks"] = {"pgd_linf": {"attack": "pgd_linf", "eps": [8], "options": {"steps": 2}}}
    params["adaptive"]["settings"] = ["bpda"]
    params["purify"]["seeds"] = 1
    pfile = _write_params(tmp_path, params)
    data = tmp_path / "data"
    for d in ("psf", "udc", "purifier", "purified_train"):  # shared stages, same params as run_dir
        shutil.copytree(run_dir / "data" / d, data / d)
    common = {"params_path": str(pfile), "data_dir": str(data)}
    for arch in NEW_ARCHS:
        train_restorer_flow(arch, **common)
        finetune_flow(arch, **common)  # before the attack: gray-box sets are also crafted on the fine-tuned model
        attack_flow(arch, **common)
        purify_flow(arch, **common)
        adaptive_flow(arch, **common)
    evaluate_flow(**common, reports_dir=str(tmp_path / "reports"))
    rows = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert set(rows) == set(NEW_ARCHS)
    for arch in NEW_ARCHS:
        spec = json.loads((data / "finetuned" / arch / "spec.json").read_text())
        assert spec["arch"] == arch
        clean, attacked = rows[arch]["none"]["eps_0"]["none"], rows[arch]["pgd_linf"]["eps_8"]["none"]
        assert np.isfinite(attacked["psnr"]) and attacked["dev_psnr"] < clean["dev_psnr"]
        assert "purify+finetune" in rows[arch]["pgd_linf"]["eps_8"]
