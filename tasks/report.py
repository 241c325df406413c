"""Task of the report stage: reports/index.html (self-contained)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths
from udcguard.attacks import ATTACKS
from udcguard.config import Params
from udcguard.evaluation import PERCEPTUAL
from udcguard.io.atomic import write_bytes
from udcguard.metrics.summary import summarize
from udcguard.report import image, render, table
from udcguard.viz import line_plot


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _history(path: Path) -> tuple[list[int], list[float]] | None:
    if not path.exists():
        return None
    loss = json.loads(path.read_text())["loss"]
    return list(range(1, len(loss) + 1)), loss


def _linf(params: Params, attack_id: str) -> bool:
    return getattr(ATTACKS.get(params.attack.spec(attack_id).attack), "norm", "linf") == "linf"


def matrix(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per (restorer, attack): PSNR without / with each defence at the attack's largest eps."""
    strongest: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["restorer"], r["attack"])
        strongest[key] = max(strongest.get(key, r["eps"]), r["eps"])
    out = []
    for (restorer, attack), eps in sorted(strongest.items()):
        row = {"restorer": restorer, "attack": attack, "eps": eps}
        for r in rows:
            if (r["restorer"], r["attack"], r["eps"]) == (restorer, attack, eps):
                row[r["defence"]] = r["psnr_mean"]
        out.append(row)
    return out, ["restorer", "attack", "eps", "none", "purify", "purify+finetune"]


def adaptive_table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Gray-box vs adaptive settings of each defended system (purify, purify+finetune)."""
    keep = [r for r in rows if r.get("setting", "").startswith(("gray-box", "adaptive"))]
    adaptive_attacks = {r["attack"].split("@")[0] for r in keep if "@" in r["attack"]}
    keep = [r for r in keep if r["attack"].split("@")[0] in adaptive_attacks
            and r["eps"] in {x["eps"] for x in keep if "@" in x["attack"]}]
    keep.sort(key=lambda r: (r["restorer"], r["defence"], r["eps"], r["setting"]))
    return keep, ["restorer", "defence", "eps", "setting", "psnr_mean", "psnr_worst_mean", "ssim_mean",
                  "ssim_worst_mean", "count"]


def tstar_section(paths: Paths) -> str:
    """The PSNR-vs-t* trade-off (clean vs attacked, unguided and guided) with the chosen t* marked."""
    if not paths.tstar.exists():
        return "<p>no t* selection (data/tstar.json missing)</p>"
    info = json.loads(paths.tstar.read_text())
    series = {}
    for key, label in (("curve", ""), ("guided_curve", f" guided {info.get('guided_scale', 0):g}")):
        pts = info.get(key) or []
        if pts:
            ts = [r["t"] for r in pts]
            series[f"clean{label}"] = (ts, [r["clean_psnr"] for r in pts])
            series[f"attacked{label}"] = (ts, [r["attacked_psnr"] for r in pts])
    plot = line_plot(series, xlabel="t* (DDPM timestep)", ylabel="restored PSNR (dB)",
                     title=f"{info['restorer']}, val slice of {info['images']}, {info['attack']} at eps {info['eps']:g}",
                     vline=(info["t_star"], f"t* = {info['t_star']} ({info['mode']})"))
    note = (f"<p>t* = {info['t_star']} ({info['mode']}; the {info['criterion']} criterion selects "
            f"{info['selected']}). Attacked inputs are fixed (gray-box); see the adaptive table.</p>")
    return note + image(_png(plot), "psnr vs t*")


def attack_costs(params: Params, paths: Paths) -> tuple[list[dict], list[str]]:
    """Mean objective, norms, queries, gradients and seconds per image, by restorer x attack x eps."""
    recs = []
    for r in params.restorers:
        f = paths.attacks(r.name) / "records.json"
        recs += [{**x, "restorer": r.name} for x in (json.loads(f.read_text()) if f.exists() else [])]
    metrics = ["objective", "linf", "l2", "queries", "grads", "seconds"]
    rows = summarize(recs, by=["restorer", "attack", "eps"], metrics=metrics) if recs else []
    return rows, ["restorer", "attack", "eps", *[f"{m}_mean" for m in metrics], "count"]


@task(name="report", cache_policy=NO_CACHE)
def write_report(params: Params, data_dir: str, reports_dir: str) -> str:
    """Tables, PSNR-vs-eps curves, training curves and example grids in one HTML file."""
    paths, out = Paths(data_dir, reports_dir), Path(reports_dir)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    for r in rows:
        for k, v in r.items():
            try:
                r[k] = float(v) if k not in ("restorer", "attack", "defence") else v
            except ValueError:
                pass
    perceptual = next((m for m in PERCEPTUAL if f"{m}_mean" in rows[0]), None)
    cols = ["restorer", "attack", "eps", "defence", "setting", "psnr_mean", "psnr_worst_mean", "ssim_mean",
            *([f"{perceptual}_mean"] if perceptual else []), "dev_psnr_mean", "input_psnr_mean", "count"]
    draws = params.purify.seeds
    sections = [("Attack matrix: PSNR (dB) per restorer x attack at its strongest level", table(*matrix(rows))),
                (f"Defence under adaptive attacks (mean / worst case over {draws} purification draw"
                 f"{'s' if draws > 1 else ''})", table(*adaptive_table(rows))),
                ("Purification strength t*", tstar_section(paths)),
                ("Results (tone-mapped domain, mean over images)", table(rows, [c for c in cols if c in rows[0]])),
                ("Attack cost (mean per image)", table(*attack_costs(params, paths)))]
    multi = [s.id for s in params.attack.attacks if len(s.eps) > 1]
    for r in params.restorers:
        mine = [x for x in rows if x["restorer"] == r.name]
        html = ""
        for attack_id in multi:
            series = {}
            for d in ("none", "purify", "purify+finetune"):
                pts = sorted((x["eps"], x["psnr_mean"]) for x in mine
                             if x["defence"] == d and x["attack"] in (attack_id, "none"))
                series[d] = ([p[0] for p in pts], [p[1] for p in pts])
            plot = line_plot(series, xlabel="eps (x 1/256)" if _linf(params, attack_id) else "eps (L2)",
                             ylabel="PSNR (dB)", title=f"{r.name}: PSNR vs {attack_id} budget")
            html += image(_png(plot), f"{r.name} psnr vs {attack_id}")
        grid = (out / "examples" / f"{r.name}.png").read_bytes()
        sections.append((f"{r.name} ({r.arch}, {r.size})", html + image(grid, f"{r.name} examples")))
    curves = {}
    for r in params.restorers:
        for label, p in ((f"{r.name} train", paths.model(r.name) / "history.json"),
                         (f"{r.name} finetune", paths.finetuned(r.name) / "history.json")):
            h = _history(p)
            if h:
                curves[label] = h
    train_plot = line_plot(curves, xlabel="step", ylabel="loss", title="restorer training", logy=True)
    sections.append(("Training curves", image(_png(train_plot), "training curves")))
    h = _history(paths.purifier / "history.json")
    if h:
        sections.append(("Purifier training", image(_png(line_plot({"DDPM loss": h}, xlabel="step", ylabel="loss", logy=True)), "purifier")))
    sections.append(("Data", image((paths.udc / "preview.png").read_bytes(), "data preview")
                     + image((paths.psf / "preview.png").read_bytes(), "PSF bank")))
    a = params.attack
    sets = "; ".join(f"{s.id} ({s.attack}{', eps ' + str(list(s.eps)) if s.eps else ''}, "
                     f"{s.objective or a.objective})" for s in a.attacks)
    p = params.purify
    sampler = "DDPM" if p.sampler == "ddpm" else f"DDIM-{p.ddim_steps} (eta {p.eta:g})"
    subtitle = (f"attacks: {sets}; reference {a.reference}, region {a.region}; purification {sampler} from "
                f"t* = {p.t_star}, {p.seeds} draw(s) per image, guidance scale {p.guidance.scale:g}; settings: "
                f"white-box (no defence), gray-box (attack the restorer, purify after), adaptive-bpda/eot/full "
                f"(attack through the purifier)")
    page = render("udcguard report", sections, subtitle=subtitle)
    write_bytes(out / "index.html", page.encode())
    return str(out / "index.html")
