"""The report: headline recovery table first, intervals on every mean, integer counts, image sets labelled."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.report import eps_text, read_rows, results_sections, write_report
from udcguard.config import load_params
from udcguard.evaluation import summary_table
from udcguard.report import render, share

REPO = Path(__file__).resolve().parents[1]
IDS = [f"{k:04d}" for k in range(12)]
GROUP = {i: f"scene{k // 3}" for k, i in enumerate(IDS)}  # 4 scenes x 3 images
SUBSET = IDS[::3]  # one image per scene: the adaptive / costly subset


def _records(restorers: tuple[str, ...] = ("discnet", "unet")) -> list[dict]:
    rng = np.random.default_rng(0)
    recs = []
    plan = [("none", 0.0, "clean", IDS, 30.0, {"none": 0.0, "purify": -1.0, "purify+finetune": -0.5})]
    plan += [("pgd_linf", e, "", IDS, 30.0 - e, {"none": 0.0, "purify": e / 2, "purify+finetune": 0.6 * e})
             for e in (1.0, 2.0, 4.0, 8.0)]
    plan += [("cw_l2", 0.0, "", SUBSET, 25.0, {"none": 0.0, "purify": 2.0, "purify+finetune": 3.0})]
    plan += [(f"pgd_linf@adaptive-{m}", 8.0, f"adaptive-{m}", SUBSET, 22.0,
              {"purify": 1.0 + k, "purify+finetune": 1.5 + k}) for k, m in enumerate(("full", "eot", "bpda"))]
    for r in restorers:
        for attack, eps, setting, ids, base, defences in plan:
            for d, gain in defences.items():
                s = setting or ("white-box" if d == "none" else "gray-box")
                for i in ids:
                    p = base + gain + rng.normal(0, 0.3)
                    recs.append({"restorer": r, "attack": attack, "eps": eps, "defence": d, "setting": s, "id": i,
                                 "group": GROUP[i], "psnr": p, "ssim": 0.8, "dev_psnr": 40.0, "input_psnr": 20.0,
                                 "psnr_worst": p - 0.2, "ssim_worst": 0.79, "lpips_rand": 0.1,
                                 "lpips_rand_worst": 0.12, "draws": 2})
    return recs


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    recs = _records()
    _write_csv(out / "metrics.csv", summary_table(recs, n_boot=200))
    _write_csv(out / "per_image.csv", recs)
    return out


def test_read_rows_types(written: Path) -> None:
    rows = read_rows(written / "metrics.csv")
    r = next(x for x in rows if x["setting"] == "gray-box" and x["attack"] == "pgd_linf" and x["eps"] == 8.0)
    assert isinstance(r["n_images"], int) and r["n_images"] == 12 and r["n_scenes"] == 4
    assert isinstance(r["recovery_n_images"], int) and r["recovery_note"] == ""
    clean = next(x for x in rows if x["setting"] == "clean" and x["defence"] == "none")
    assert clean["recovery"] is None and isinstance(clean["psnr_lo"], float)
    assert read_rows(written / "per_image.csv")[0]["id"] == "0000"  # ids stay text


def test_sections_headline_intervals_counts_and_sets(written: Path) -> None:
    rows, per_image = read_rows(written / "metrics.csv"), read_rows(written / "per_image.csv")
    sections = results_sections(rows, per_image, eps_text(None), draws=2)
    assert [h for h, _ in sections][0] == "Recovery share"
    page = render("udcguard report", sections)
    head = sections[0][1]
    # the headline: PGD at its strongest adaptive level, every setting a column, "NN % [lo, hi]" cells
    assert "pgd_linf at 8/256" in head
    for s in ("gray-box", "adaptive-bpda", "adaptive-eot", "adaptive-full"):
        assert f"<th>{s}</th>" in head
    gray = next(r for r in rows if (r["restorer"], r["attack"], r["eps"], r["defence"]) ==
                ("discnet", "pgd_linf", 8.0, "purify"))
    assert gray["recovery"] == pytest.approx(0.5, abs=0.1)
    assert share(gray) in head and re.search(r"\d+ % \[\d+, \d+\]", head)
    assert "12 img / 4 scenes" in head and "4 img / 4 scenes" in head
    assert "different image sets" in head  # gray-box on all 12 images, adaptive on the subset of 4
    assert "wins back" in head and "strongest adaptive attack (adaptive-full)" in head  # the weakest share
    assert "<details>" in head and "cw_l2" in head  # every attack at its strongest level
    # every mean with its interval, counts as integers
    assert re.search(r"<td>\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]</td>", page)
    assert "<td>12</td>" in page and "<td>4</td>" in page
    assert not re.search(r">(12|4)\.00<", page)
    assert "Image set A: 12 images / 4 scenes" in page and "Image set B: 4 images / 4 scenes" in page
    assert page.index("Recovery share") < page.index("Attack matrix") < page.index("Results (")


def test_write_report_on_fake_dirs(written: Path, tmp_path: Path) -> None:
    """The whole page with the repository's params: three restorers' rows, fake data previews."""
    params = load_params(REPO / "params.yaml")
    names = tuple(r.name for r in params.restorers)
    reports, data = tmp_path / "reports", tmp_path / "data"
    (reports / "examples").mkdir(parents=True)
    recs = _records(names)
    _write_csv(reports / "metrics.csv", summary_table(recs, n_boot=100))
    _write_csv(reports / "per_image.csv", recs)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    for n in names:
        (reports / "examples" / f"{n}.png").write_bytes(buf.getvalue())
    for d in ("udc", "psf"):
        (data / d).mkdir(parents=True)
        (data / d / "preview.png").write_bytes(buf.getvalue())
    (data / "attacks" / names[0]).mkdir(parents=True)
    costs = [{"id": i, "attack": "pgd_linf", "eps": 8.0, "objective": 0.01, "linf": 8 / 256, "l2": 1.5,
              "queries": 20, "grads": 20, "seconds": 0.5} for i in IDS]
    (data / "attacks" / names[0] / "records.json").write_text(json.dumps(costs))
    html = Path(write_report.fn(params, str(data), str(reports))).read_text()
    assert html.index("Recovery share") < html.index("Attack matrix") < html.index("Purification strength t*")
    assert "Attack cost" in html and "Training curves" in html and all(n in html for n in names)
    assert "Purification + fine-tuning wins back" in html
    cost = html[html.index("Attack cost"):]
    assert "<td>20.00 [20.00, 20.00]</td>" in cost and "<td>12</td><td>4</td>" in cost  # queries; images, scenes
