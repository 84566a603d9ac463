"""The hot-path bench's figures (a run's JSON) as the Markdown of docs/benchmarks.md: the
run's header lines, the results table with its targets, and the peers table. Only figures
are generated; the prose around the marked blocks is written by hand.

Usage (re-render the document from a saved run)::

    .venv/bin/python bench/render.py [bench/results/run.json] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cells import OPERATIONS
from common import REPO, fmt_ratio, replace_blocks
from harness import fmt_latency, fmt_ops

DEFAULT_JSON = REPO / "bench" / "results" / "run.json"
HEADER = (
    "backend",
    "operation",
    "callers",
    "store ops/s",
    "store p50 µs",
    "store p99 µs",
    "raw ops/s",
    "raw p50 µs",
    "raw p99 µs",
    "ratio",
    "gc ops/s",
    "gc ratio",
    "sync sqlite3 ops/s",
    "target",
)


def ratio(cell: dict[str, Any], against: str) -> float | None:
    """store ops/s over ``against``'s, or None when either has no figure."""
    store, other = cell["contenders"]["store"], cell["contenders"].get(against)
    if other is None or not store["ops_s"] or not other["ops_s"]:
        return None
    return float(store["ops_s"]) / float(other["ops_s"])


def verdict(cell: dict[str, Any]) -> tuple[bool, str]:
    """Whether the row met its target, and the target column's text, e.g. "0.85 raw: met"
    or "0.85 raw: missed by 12%"."""
    wanted, against = cell["target"]
    measured = ratio(cell, against)
    if measured is None:
        return False, f"{wanted} {against}: -"
    if measured >= wanted:
        return True, f"{wanted} {against}: met"
    return False, f"{wanted} {against}: missed by {1 - measured / wanted:.0%}"


def ordered(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Backends in the order they ran; within one, operations in table order, then callers."""
    backends = list(dict.fromkeys(cell["backend"] for cell in cells))
    return sorted(
        cells,
        key=lambda c: (
            backends.index(c["backend"]),
            OPERATIONS.index(c["operation"]),
            c["callers"],
        ),
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A Markdown table, columns padded, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(row, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if right else "-" * (w + 2)
            for w, right in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def judged(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells of the results table: the store against raw, with a target."""
    return [cell for cell in ordered(cells) if cell["target"] is not None]


def otel_table(cells: Sequence[dict[str, Any]]) -> str:
    """append_event with the OpenTelemetry SDK configured against the same store without."""
    rows = []
    for cell in ordered(cells):
        plain, traced = cell["contenders"]["store"], cell["contenders"].get("otel")
        if traced is None:
            continue
        cost = (
            f"{1e6 / traced['ops_s'] - 1e6 / plain['ops_s']:.0f}"
            if traced["ops_s"] and plain["ops_s"]
            else "-"
        )
        rows.append(
            [
                cell["backend"],
                fmt_ops(plain["ops_s"]),
                fmt_latency(plain["p50_us"]),
                fmt_ops(traced["ops_s"]),
                fmt_latency(traced["p50_us"]),
                fmt_ratio(ratio(cell, "otel")),
                cost,
            ]
        )
    header = (
        "backend",
        "untraced ops/s",
        "untraced p50 µs",
        "traced ops/s",
        "traced p50 µs",
        "untraced / traced",
        "µs per call",
    )
    return table(header, rows, [False] + [True] * 6)


def results_table(cells: Sequence[dict[str, Any]]) -> str:
    def figures(cell: dict[str, Any], label: str) -> list[str]:
        side = cell["contenders"].get(label)
        if side is None:
            return ["-", "-", "-"]
        return [fmt_ops(side["ops_s"]), fmt_latency(side["p50_us"]), fmt_latency(side["p99_us"])]

    rows = []
    for cell in judged(cells):
        gc = "gc" in cell["contenders"]
        rows.append(
            [
                cell["backend"],
                cell["operation"],
                str(cell["callers"]),
                *figures(cell, "store"),
                *figures(cell, "raw"),
                fmt_ratio(ratio(cell, "raw")),
                figures(cell, "gc")[0],
                fmt_ratio(ratio(cell, "gc")) if gc else "-",
                figures(cell, "sync")[0],
                verdict(cell)[1],
            ]
        )
    return table(HEADER, rows, [2 <= i < len(HEADER) - 1 for i in range(len(HEADER))])


def standing(cells: Sequence[dict[str, Any]]) -> str:
    """Which rows met their target and which missed, by how much."""
    lines = []
    met = 0
    cells = judged(cells)
    for cell in cells:
        ok, _text = verdict(cell)
        met += ok
        wanted, against = cell["target"]
        callers = "1 caller" if cell["callers"] == 1 else f"{cell['callers']} callers"
        measured = fmt_ratio(ratio(cell, against))
        outcome = "met" if ok else _text.split(": ", 1)[1]
        lines.append(
            f"- {outcome}: {cell['backend']} {cell['operation']}, {callers}: {measured} of"
            f" {against} (target {wanted})"
        )
    return f"Targets met: {met} of {len(cells)} rows.\n\n" + "\n".join(lines)


def run_lines(data: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"- Command: `{data['command']}`",
            f"- Date: {data['date']}",
            f"- Code: {data['code']}",
            f"- Machine: {data['machine']}",
            f"- Software: {data['software']}",
            f"- Method: {data['duration']:g} s per cell and contender after a warm-up, in"
            f" {data['rounds']} rounds that alternate the contenders.",
        ]
    )


def blocks(data: dict[str, Any]) -> dict[str, str]:
    """The marked blocks of docs/benchmarks.md this run's figures fill."""
    out = {"run": run_lines(data)}
    if data["cells"]:
        out["results"] = results_table(data["cells"])
        out["standing"] = standing(data["cells"])
        if any("otel" in cell["contenders"] for cell in data["cells"]):
            out["otel"] = otel_table(data["cells"])
    if data.get("peers") is not None:
        from peers import PeerCell, peers_markdown

        out["peers"] = peers_markdown([PeerCell(**cell) for cell in data["peers"]])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default=str(DEFAULT_JSON))
    parser.add_argument("--write", nargs="?", const="docs/benchmarks.md", metavar="PATH")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.json).read_text(encoding="utf-8"))
    rendered = blocks(data)
    if args.write:
        replace_blocks(Path(args.write), rendered)
    else:
        print("\n\n".join(rendered.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
