"""Self-contained HTML report: tables, plots and image grids embedded as data URIs.

Pure: rows (dicts of the long-format table, see :func:`udcguard.evaluation.summary_table`) in, HTML out. A mean
column ``<m>_mean`` prints with its interval ``<m>_lo``/``<m>_hi`` when the row has one; counts print as integers.
Rows resting on different image sets are labelled (:func:`image_sets`) and a table that mixes them says so.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
.note{color:#555;font-size:13px} .warn{color:#8a4b00;font-size:13px}
.n{color:#777;font-size:11px} td.share{text-align:center} details{margin:1em 0}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


#: Columns that hold counts (printed as integers even when read back as floats).
INT_COLUMNS = {"count", "draws", "recovery_n_images", "recovery_n_scenes"}


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits if abs(v) >= 1 or v == 0 else 4}f}"


def cell(r: Mapping[str, Any], c: str, *, digits: int = 2) -> str:
    """Text of column ``c`` of row ``r``: ``mean [lo, hi]`` for a mean with its interval, ints as ints."""
    v = r.get(c)
    if v is None or v == "":
        return ""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if c == "eps":
        return f"{v:g}"
    if isinstance(v, int) or (c.startswith("n_") or c in INT_COLUMNS) and v == int(v):
        return str(int(v))
    if c.endswith("_mean"):
        lo, hi = r.get(c[:-5] + "_lo"), r.get(c[:-5] + "_hi")
        if isinstance(lo, int | float) and isinstance(hi, int | float) and not (math.isnan(lo) or math.isnan(hi)):
            return f"{_num(v, digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"
    return _num(v, digits)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, digits: int = 2,
          headers: Mapping[str, str] | None = None) -> str:
    """HTML table of ``rows`` restricted to ``columns`` (see :func:`cell`); ``headers`` renames columns."""
    head = "".join(f"<th>{html.escape((headers or {}).get(c, c))}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cls = "" if isinstance(v, int | float) and not isinstance(v, bool) else " class='l'"
            cells.append(f"<td{cls}>{html.escape(cell(r, c, digits=digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(title: str, sections: Sequence[tuple[str, str]], *, subtitle: str = "") -> str:
    """Assemble the page from (heading, inner HTML) sections."""
    parts = [f"<h2>{html.escape(h)}</h2>\n{body}" for h, body in sections]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='note'>{html.escape(subtitle)}</p>{''.join(parts)}</body></html>\n"
    )


def image(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='{data_uri(png)}'>"


# ------------------------------------------------------------------ image sets
KEYS = ("restorer", "attack", "eps", "defence", "setting")


def row_key(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (r["restorer"], r["attack"], float(r["eps"]), r["defence"], r["setting"])


def image_sets(rows: Sequence[Mapping[str, Any]],
               ids: Mapping[tuple[Any, ...], frozenset[Hashable]] | None = None) -> dict[tuple[Any, ...], str]:
    """Row key -> label of the image set the row rests on ("A", "B", ...; "A" the largest).

    ``ids``: row key -> its image ids (from per_image.csv); without it rows are told apart by
    (n_images, n_scenes) only. A label reads e.g. "A: 100 images / 12 scenes" (see :func:`set_legend`).
    """
    sig = {row_key(r): (ids or {}).get(row_key(r)) or (r.get("n_images"), r.get("n_scenes")) for r in rows}
    size = {s: next(r.get("n_images") or 0 for r in rows if sig[row_key(r)] == s) for s in sig.values()}
    order = sorted(size, key=lambda s: (-size[s], str(sorted(map(str, s))) if isinstance(s, frozenset) else str(s)))
    names = {s: chr(ord("A") + k) if k < 26 else f"S{k}" for k, s in enumerate(order)}
    return {k: names[s] for k, s in sig.items()}


def set_legend(rows: Sequence[Mapping[str, Any]], sets: Mapping[tuple[Any, ...], str]) -> dict[str, str]:
    """Label -> "100 images / 12 scenes" for the sets of ``rows``."""
    out: dict[str, str] = {}
    for r in rows:
        out.setdefault(sets[row_key(r)], f"{cell(r, 'n_images')} images / {cell(r, 'n_scenes')} scenes")
    return dict(sorted(out.items()))


def mixed_note(rows: Sequence[Mapping[str, Any]], sets: Mapping[tuple[Any, ...], str], what: str = "rows") -> str:
    """A warning paragraph when ``rows`` rest on more than one image set ('' otherwise)."""
    legend = set_legend(rows, sets)
    if len(legend) < 2:
        return ""
    parts = "; ".join(f"set {k} = {v}" for k, v in legend.items())
    return (f"<p class='warn'>These {html.escape(what)} rest on different image sets ({html.escape(parts)}): "
            f"compare values only within one set; the set of each is shown.</p>")


# ------------------------------------------------------------------ recovery share (the headline)
#: Column order of the settings in the recovery tables; other settings follow.
SETTINGS = ("gray-box", "transfer", "adaptive-bpda", "adaptive-eot", "adaptive-full")
DEFENCE_NAMES = {"purify": "purification", "purify+finetune": "purification + fine-tuning",
                 "purify-avg": "purification, draws averaged", "purify-avg+finetune": "purification + fine-tuning, draws averaged"}


def base_attack(attack: str) -> str:
    return attack.split("@", 1)[0]


def share(r: Mapping[str, Any] | None) -> str:
    """ "60 % [48, 71]" from a row's recovery columns; "n/a" when undefined."""
    if r is None or not isinstance(r.get("recovery"), int | float) or math.isnan(r["recovery"]):
        return "n/a"
    return f"{100 * r['recovery']:.0f} % [{100 * r['recovery_lo']:.0f}, {100 * r['recovery_hi']:.0f}]"


def recovery_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows that carry a recovery share (or the note why not)."""
    return [r for r in rows if r.get("recovery_n_images") is not None or r.get("recovery_note")]


def headline_level(rows: Sequence[Mapping[str, Any]]) -> tuple[str, float] | None:
    """(base attack id, eps) of the headline: the attack run adaptively (else a PGD, else the most common one),
    at its strongest eps that has adaptive rows (else its strongest eps)."""
    rec = recovery_rows(rows)
    if not rec:
        return None
    bases = [base_attack(r["attack"]) for r in rec]
    adaptive = [base_attack(r["attack"]) for r in rec if "@" in r["attack"]]
    pgd = [b for b in bases if "pgd" in b]
    attack = (adaptive or pgd or sorted(bases, key=bases.count, reverse=True))[0]
    mine = [r for r in rec if base_attack(r["attack"]) == attack]
    eps = [float(r["eps"]) for r in mine if "@" in r["attack"]] or [float(r["eps"]) for r in mine]
    return attack, max(eps)


def _settings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = list(dict.fromkeys(r["setting"] for r in rows))
    return [s for s in SETTINGS if s in present] + [s for s in present if s not in SETTINGS]


def share_grid(rows: Sequence[Mapping[str, Any]], line: Callable[[Mapping[str, Any]], tuple[Any, ...]]
               ) -> tuple[list[str], list[tuple[tuple[Any, ...], dict[str, Mapping[str, Any]]]]]:
    """The settings (columns) and, sorted by line key, each line's rows by setting: the grid behind
    :func:`share_table` and :func:`headline_markdown`."""
    grid: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        grid.setdefault(line(r), {})[r["setting"]] = r
    return _settings(rows), sorted(grid.items(), key=lambda kv: tuple(map(str, kv[0])))


def share_table(rows: Sequence[Mapping[str, Any]], line: Callable[[Mapping[str, Any]], tuple[Any, ...]],
                line_names: Sequence[str], sets: Mapping[tuple[Any, ...], str]) -> str:
    """Grid of recovery shares: one line per ``line(row)`` (named by ``line_names``), one column per setting;
    each cell "60 % [48, 71]" over "n images / n scenes" (and its image set when the grid mixes sets)."""
    settings, grid = share_grid(rows, line)
    mixed = len({sets[row_key(r)] for r in rows}) > 1
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*line_names, *settings))
    body = []
    for key, by in grid:
        tds = "".join(f"<td class='l'>{html.escape(str(v))}</td>" for v in key)
        for s in settings:
            r = by.get(s)
            if r is None:
                tds += "<td></td>"
                continue
            n = (f"{cell(r, 'recovery_n_images')} img / {cell(r, 'recovery_n_scenes')} scenes"
                 + (f", set {sets[row_key(r)]}" if mixed else ""))
            note = f" title='{html.escape(r['recovery_note'])}'" if r.get("recovery_note") else ""
            tds += f"<td class='share'{note}>{html.escape(share(r))}<br><span class='n'>{html.escape(n)}</span></td>"
        body.append(f"<tr>{tds}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def summary_paragraph(rows: Sequence[Mapping[str, Any]], attack: str, eps: float, eps_label: str) -> str:
    """Plain-language sentences from the headline rows (one per restorer)."""
    out = []
    for restorer in sorted({r["restorer"] for r in rows}):
        mine = [r for r in rows if r["restorer"] == restorer]
        gray = {r["defence"]: r for r in mine if r["setting"] == "gray-box"}
        known = [r for r in mine if isinstance(r.get("clean_psnr"), int | float)]
        ref = next((r for r in known if r["setting"] == "gray-box"), known[0] if known else None)
        s = f"<b>{html.escape(restorer)}</b>: {html.escape(attack)} at {html.escape(eps_label)}"
        if ref is not None:
            s += (f" takes the restored PSNR from {ref['clean_psnr']:.2f} dB to {ref['attacked_psnr']:.2f} dB"
                  f" (on {cell(ref, 'recovery_n_images')} images / {cell(ref, 'recovery_n_scenes')} scenes)")
        s += ". "
        parts = []
        for d in sorted({r["defence"] for r in mine}):
            name = DEFENCE_NAMES.get(d, d)
            txt = name[:1].upper() + name[1:]
            if d in gray:
                txt += f" wins back {share(gray[d])} of that loss when the attacker does not know the purifier"
            adaptive = [r for r in mine if r["defence"] == d and r["setting"].startswith("adaptive")
                        and share(r) != "n/a"]
            if adaptive:
                worst = min(adaptive, key=lambda r: r["recovery"])
                txt += ("; against" if d in gray else " wins back, against")
                txt += (f" the strongest adaptive attack ({worst['setting']}), {share(worst)}"
                        f" on {cell(worst, 'recovery_n_images')} images / {cell(worst, 'recovery_n_scenes')} scenes")
            if d in gray or adaptive:
                parts.append(txt + ".")
        s += " ".join(parts)
        out.append(s)
    note = ("Shares are (defended - attacked) / (clean - attacked) in PSNR on the images common to the three rows, "
            "with 95 % bootstrap intervals over scenes, then images. A defence counts as robust only under its "
            "strongest adaptive attack.")
    return f"<p>{' '.join(out)}</p><p class='note'>{note}</p>"


def headline(rows: Sequence[Mapping[str, Any]], sets: Mapping[tuple[Any, ...], str],
             eps_label: Callable[[str, float], str]) -> str:
    """The report's opening: the recovery share at the headline level, a summary paragraph, and every attack at its
    strongest level in a collapsed table. ``eps_label(attack, eps)``: e.g. "8/256"."""
    level = headline_level(rows)
    if level is None:
        return "<p>No defended rows with a recovery share in metrics.csv.</p>"
    attack, eps = level
    rec = recovery_rows(rows)
    # one attack and level: the transfer column is that attack crafted on the trained restorer and scored on
    # purify + the fine-tuned one (the transfer attack family is in the table of every attack below)
    top = [r for r in rec if base_attack(r["attack"]) == attack and float(r["eps"]) == eps]
    label = eps_label(attack, eps)
    sig = {(r.get("recovery_n_images"), r.get("recovery_n_scenes"), sets[row_key(r)]) for r in top}
    warn = ("<p class='warn'>Cells rest on different image sets (costly and adaptive attacks run on a stratified "
            "subset); each share uses the images common to its clean, attacked and defended rows: compare the "
            "counts under each cell.</p>" if len(sig) > 1 else "")
    main = share_table(top, lambda r: (r["restorer"], r["defence"]), ["restorer", "defence"], sets)
    strongest = {}
    for r in rec:
        k = base_attack(r["attack"])
        strongest[k] = max(strongest.get(k, float(r["eps"])), float(r["eps"]))
    every = [r for r in rec if float(r["eps"]) == strongest[base_attack(r["attack"])]]
    detail = share_table(every, lambda r: (r["restorer"], base_attack(r["attack"]),
                                           eps_label(base_attack(r["attack"]), float(r["eps"])), r["defence"]),
                         ["restorer", "attack", "eps", "defence"], sets)
    return (f"<p>Share of the PSNR lost to {html.escape(attack)} at {html.escape(label)} that each defence wins "
            f"back, per setting; 95 % interval in brackets, images / scenes below.</p>{warn}{main}"
            f"{summary_paragraph(top, attack, eps, label)}"
            f"<details><summary>Every attack at its strongest level</summary>{mixed_note(every, sets, 'cells')}"
            f"{detail}</details>")


def headline_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The headline as a Markdown table (the README's results section): recovery share per restorer x defence
    x setting at :func:`headline_level`, each cell "60 % [48, 71] (n img / n scenes)"; '' without shares."""
    level = headline_level(rows)
    if level is None:
        return ""
    attack, eps = level
    rec = [r for r in recovery_rows(rows) if base_attack(r["attack"]) == attack and float(r["eps"]) == eps]
    settings, grid = share_grid(rec, lambda r: (r["restorer"], r["defence"]))
    lines = [f"Recovery share at {attack} eps {eps:g} (95 % interval; images / scenes):", "",
             "| restorer | defence | " + " | ".join(settings) + " |", "|---|---|" + "---:|" * len(settings)]
    for (restorer, defence), by in grid:
        cells = [f"{share(by[s])} ({by[s]['recovery_n_images']} / {by[s]['recovery_n_scenes']})" if s in by else ""
                 for s in settings]
        lines.append(f"| {restorer} | {defence} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
