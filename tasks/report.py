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
from udcguard.config import Params
from udcguard.io.atomic import write_bytes
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
    cols = ["restorer", "attack", "eps", "defence", "psnr_mean", "ssim_mean", "dev_psnr_mean", "input_psnr_mean", "count"]
    sections = [("Results (tone-mapped domain, mean over images)", table(rows, [c for c in cols if c in rows[0]]))]
    for r in params.restorers:
        mine = [x for x in rows if x["restorer"] == r.name]
        series = {}
        for d in ("none", "purify", "purify+finetune"):
            pts = sorted((x["eps"], x["psnr_mean"]) for x in mine if x["defence"] == d)
            series[d] = ([p[0] for p in pts], [p[1] for p in pts])
        plot = line_plot(series, xlabel="eps (x 1/256)", ylabel="PSNR (dB)", title=f"{r.name}: PSNR vs PGD budget")
        grid = (out / "examples" / f"{r.name}.png").read_bytes()
        sections.append((f"{r.name} ({r.arch}, {r.size})", image(_png(plot), f"{r.name} psnr vs eps") + image(grid, f"{r.name} examples")))
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
    subtitle = (f"attack {a.name}, {a.steps} steps, eps {list(a.eps)}/256, objective {a.objective} vs {a.reference}; "
                f"purification DDPM from t*={params.purify.t_star}; gray-box setting (attack on the undefended restorer)")
    page = render("udcguard report", sections, subtitle=subtitle)
    write_bytes(out / "index.html", page.encode())
    return str(out / "index.html")
