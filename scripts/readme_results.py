"""Rewrite the README's results table from reports/metrics.csv (run after `dvc repro` on params.yaml).

    .venv/bin/python scripts/readme_results.py [--check]

tests/test_results_in_git.py fails when the README's table and the committed metrics disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tasks.report import read_rows  # noqa: E402
from udcguard.report import headline_markdown  # noqa: E402

START, END = "<!-- results:start -->\n", "<!-- results:end -->"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: no {START.strip()} ... {END} markers", file=sys.stderr)
        return 2
    table = headline_markdown(read_rows(ROOT / "reports" / "metrics.csv"))
    new = text[: text.index(START) + len(START)] + "\n" + table + "\n" + text[text.index(END):]
    if "--check" in sys.argv[1:]:
        return 0 if new == text else 1
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
