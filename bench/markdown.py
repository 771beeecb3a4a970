"""The README's benchmark tables from one `bench/run --json` report.

bench/run --json > report.json && python bench/markdown.py < report.json
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import render
from bench.goals import short


def markdown(report: dict) -> str:
    m = report["machine"]
    head = (
        f"One run ({report['date']}, `bench/run`, {report['seconds']:.0f} s) on {m['nproc']} CPUs "
        f"({m['cpu']}), {m['ram']} RAM, Linux {m['kernel']}, Python {m['python']}, dulwich "
        f"{m['dulwich']}, git {m['git']}, podman {m['podman']}:"
    )
    lines = [
        *textwrap.wrap(head, 92),
        "",
        "| figure | value | unit | how |",
        "| --- | ---: | --- | --- |",
    ]
    for f in report["figures"]:
        cell = render(f["value"], f["unit"])
        lines.append(
            f"| {f['label']} | {cell} | {f['unit']} | {f['note']} |".replace("|  |", "| |")
        )
    lines += ["", "| goal (issue 17) | figure | bound | verdict | anchor, same run |"]
    lines.append("| --- | ---: | --- | --- | --- |")
    for g in report["goals"]:
        value = "-" if g["value"] is None else short(float(g["value"]))
        lines.append(
            f"| {g['goal']} | {value} | {g['bound']} | {g['verdict']} | {g['anchor']} |".replace(
                "<", "&lt;"
            ).replace("|  |", "| |")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(json.load(sys.stdin)))
