"""Self-contained HTML report: tables, plots and image grids embedded as data URIs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
.note{color:#555;font-size:13px}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, digits: int = 2) -> str:
    """HTML table of ``rows`` restricted to ``columns``; numbers rounded."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, float):
                cells.append(f"<td>{v:.{digits if abs(v) >= 1 or v == 0 else 4}f}</td>")
            else:
                cells.append(f"<td class='l'>{html.escape(str(v))}</td>")
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
