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
from udcguard.metrics.summary import summarize, summarize_ci
from udcguard.report import cell, headline, image, image_sets, mixed_note, render, row_key, set_legend, share, table
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


#: Text columns of metrics.csv / per_image.csv; count columns are read as ints, the rest as floats.
TEXT = {"restorer", "attack", "defence", "setting", "id", "group", "recovery_note", "method"}
INTS = {"n_images", "n_scenes", "recovery_n_images", "recovery_n_scenes", "draws", "count"}


def _typed(k: str, v: str):
    if k in TEXT or v is None:
        return v
    if v == "":
        return None
    try:
        return int(float(v)) if k in INTS else float(v)
    except ValueError:
        return v


def read_rows(path: Path) -> list[dict]:
    """A CSV written by the evaluate stage, typed: text columns as str, counts as int, the rest float, "" None."""
    with path.open() as f:
        return [{k: _typed(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def row_ids(per_image: list[dict]) -> dict[tuple, frozenset]:
    """Row key (restorer, attack, eps, defence, setting) -> the ids of its images."""
    out: dict[tuple, set] = {}
    for r in per_image:
        out.setdefault(row_key(r), set()).add(r["id"])
    return {k: frozenset(v) for k, v in out.items()}


def eps_text(params: Params | None):
    """eps_label(attack, eps) for the report: "8/256" for L-inf budgets, "0.5 (L2)" otherwise, "-" if unbounded."""
    def label(attack: str, eps: float) -> str:
        if eps == 0:
            return "unbounded"
        try:
            linf = params is None or _linf(params, attack.split("@", 1)[0])
        except Exception:  # an attack id the params do not configure (e.g. an older metrics.csv)
            linf = "l2" not in attack
        return f"{eps:g}/256" if linf else f"{eps:g} (L2)"

    return label


def matrix(rows: list[dict], sets: dict | None = None) -> tuple[list[dict], list[str]]:
    """One row per (restorer, attack): PSNR without / with each defence at the attack's largest eps.

    Each cell "mean [lo, hi]"; with ``sets`` (see udcguard.report.image_sets) a cell on another image set than the
    line's first one is suffixed with its set label.
    """
    strongest: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["restorer"], r["attack"])
        strongest[key] = max(strongest.get(key, r["eps"]), r["eps"])
    out, defences = [], list(dict.fromkeys(["none", "purify", "purify+finetune", *(r["defence"] for r in rows)]))
    for (restorer, attack), eps in sorted(strongest.items()):
        row: dict = {"restorer": restorer, "attack": attack, "eps": eps}
        first = None
        for r in rows:
            if (r["restorer"], r["attack"], r["eps"]) == (restorer, attack, eps):
                txt = cell(r, "psnr_mean")
                label = sets.get(row_key(r)) if sets else None
                first = first or label
                row[r["defence"]] = txt + (f" (set {label})" if label and label != first else "")
                if "images" not in row:
                    row["images"] = f"{r['n_images']} / {r['n_scenes']}" + (f" (set {label})" if label else "")
        out.append(row)
    return out, ["restorer", "attack", "eps", *[d for d in defences if any(d in x for x in out)], "images"]


def adaptive_table(rows: list[dict], sets: dict | None = None) -> tuple[list[dict], list[str]]:
    """Gray-box vs adaptive settings of each defended system (purify, purify+finetune), with each row's image set."""
    keep = [r for r in rows if r.get("setting", "").startswith(("gray-box", "adaptive"))]
    adaptive_attacks = {r["attack"].split("@")[0] for r in keep if "@" in r["attack"]}
    keep = [r for r in keep if r["attack"].split("@")[0] in adaptive_attacks
            and r["eps"] in {x["eps"] for x in keep if "@" in x["attack"]}]
    keep = [{**r, "image set": (sets or {}).get(row_key(r), "")} for r in keep]
    keep.sort(key=lambda r: (r["restorer"], r["defence"], r["eps"], r["setting"]))
    return keep, ["restorer", "defence", "eps", "setting", "psnr_mean", "psnr_worst_mean", "ssim_mean",
                  "ssim_worst_mean", "recovery_text", "n_images", "n_scenes", "image set"]


def by_image_set(rows: list[dict], columns: list[str], sets: dict) -> str:
    """One table per image set, largest first, each under a line naming it."""
    legend = set_legend(rows, sets)
    parts = []
    for label, text in legend.items():
        mine = [r for r in rows if sets[row_key(r)] == label]
        head = f"<p class='note'>Image set {label}: {text}</p>" if len(legend) > 1 else ""
        parts.append(head + table(mine, columns))
    return "".join(parts)


def results_sections(rows: list[dict], per_image: list[dict] | None, eps_label, draws: int) -> list[tuple[str, str]]:
    """The table sections of the report (headline first), from typed metrics.csv rows and per_image.csv records."""
    sets = image_sets(rows, row_ids(per_image) if per_image else None)
    for r in rows:
        r["recovery_text"] = share(r) if r.get("recovery_n_images") is not None else ""
    perceptual = next((m for m in PERCEPTUAL if f"{m}_mean" in rows[0]), None)
    cols = ["restorer", "attack", "eps", "defence", "setting", "psnr_mean", "psnr_worst_mean", "ssim_mean",
            *([f"{perceptual}_mean"] if perceptual else []), "dev_psnr_mean", "input_psnr_mean", "recovery_text",
            "n_images", "n_scenes"]
    m_rows, m_cols = matrix(rows, sets)
    a_rows, a_cols = adaptive_table(rows, sets)
    return [
        ("Recovery share", headline(rows, sets, eps_label)),
        ("Attack matrix: PSNR (dB) per restorer x attack at its strongest level",
         "<p class='note'>mean [95 % interval]; images / scenes of the undefended row.</p>"
         + mixed_note(rows, sets, "attacks") + table(m_rows, m_cols)),
        (f"Defence under adaptive attacks (mean / worst case over {draws} purification draw"
         f"{'s' if draws > 1 else ''})", mixed_note(a_rows, sets) + table(a_rows, a_cols, headers=HEADERS)),
        ("Results (tone-mapped domain, mean [95 % interval] over images; by image set)",
         by_image_set(rows, [c for c in cols if c in rows[0]], sets)),
    ]


HEADERS = {"recovery_text": "recovery share"}


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


def attack_costs(params: Params, paths: Paths, groups: dict | None = None) -> tuple[list[dict], list[str]]:
    """Mean [95 % interval] objective, norms, queries, gradients and seconds per image, by restorer x attack x eps.

    ``groups``: image id -> scene group (from per_image.csv) for the two-level bootstrap; each image its own
    group without it.
    """
    recs = []
    for r in params.restorers:
        f = paths.attacks(r.name) / "records.json"
        recs += [{**x, "restorer": r.name, **({"group": groups[x["id"]]} if groups and x["id"] in groups else {})}
                 for x in (json.loads(f.read_text()) if f.exists() else [])]
    metrics = ["objective", "linf", "l2", "queries", "grads", "seconds"]
    try:
        rows = summarize_ci(recs, by=["restorer", "attack", "eps"], metrics=metrics, n_boot=1000) if recs else []
    except ValueError:  # an image twice in one (restorer, attack, eps): plain means, no interval
        rows = summarize(recs, by=["restorer", "attack", "eps"], metrics=metrics)
        for r in rows:
            r["n_images"], r["n_scenes"] = r.pop("count"), None
    return rows, ["restorer", "attack", "eps", *[f"{m}_mean" for m in metrics], "n_images", "n_scenes"]


@task(name="report", cache_policy=NO_CACHE)
def write_report(params: Params, data_dir: str, reports_dir: str) -> str:
    """Tables, PSNR-vs-eps curves, training curves and example grids in one HTML file."""
    paths, out = Paths(data_dir, reports_dir), Path(reports_dir)
    rows = read_rows(out / "metrics.csv")
    per_image = read_rows(out / "per_image.csv") if (out / "per_image.csv").exists() else None
    groups = {r["id"]: r["group"] for r in per_image or [] if r.get("group") is not None}
    sections = results_sections(rows, per_image, eps_text(params), params.purify.seeds)
    sections[3:3] = [("Purification strength t*", tstar_section(paths))]
    costs, cost_cols = attack_costs(params, paths, groups)
    mixed = len({(r["n_images"], r["n_scenes"]) for r in costs}) > 1
    note = "<p class='warn'>Attacks ran on different numbers of images (n_images, n_scenes).</p>" if mixed else ""
    sections.append(("Attack cost (mean [95 % interval] per image)", note + table(costs, cost_cols)))
    multi = [s.id for s in params.attack.attacks if len(s.eps) > 1]
    for r in params.restorers:
        mine = [x for x in rows if x["restorer"] == r.name]
        html = ""
        for attack_id in multi:
            series = {}
            for d in dict.fromkeys(x["defence"] for x in mine):  # gray-box: the deployed restorer attacked
                pts = sorted((x["eps"], x["psnr_mean"]) for x in mine if x["defence"] == d
                             and x["attack"] in (attack_id, "none") and x["setting"] in ("clean", "white-box", "gray-box"))
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
