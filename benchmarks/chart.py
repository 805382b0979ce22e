"""A chart of one compare.py run: ours, stock and the limit, as an SVG.

    .venv/bin/python benchmarks/chart.py [benchmarks/results/full-XXXX.json]
                                         [-o benchmarks/results/chart.svg]

Reads the JSON that ``compare.py --json FILE`` writes (its ``machine``
and ``results``: one entry a cell, with the ``stock``, ``ours``, ``limit``
and, for cells that update, ``wlimit`` measurements of the attempt it
kept) and draws requests a second on a log scale, one panel a workload
(and session size), one group of bars a connection count.  Under each
group is ours/stock, as compare.py prints it; an asterisk marks a cell
whose kept attempt was still disturbed (more than 0.10 of a CPU busy with
other work, compare.py's DISTURBED), so that its ratio is rough.

Without a file it takes the newest benchmarks/results/full-*.json by the
date the run recorded (not by name: full-2026-12-02.json is older than
full-2026-12-02-d.json).  Only the standard library is used; the SVG is
the same for the same JSON, so a committed chart can be checked by
drawing it again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

RESULTS = Path(__file__).resolve().parent / "results"

SIZED = {"lookup-hit", "mix", "update"}     # compare.py's SIZED: the others carry no session
DISTURBED = 0.10                            # compare.py's DISTURBED

# The measurements of a cell, in the order they are drawn, with their colours.
# A label's {stock} and {ours} are the run's cache tables' types (btree, lmdb).
KINDS = [("stock", "stock tlsmgr ({stock}:)", "#8c8c8c"),
         ("ours", "ours ({ours}:)", "#1f77b4"),
         ("limit", "limit: responder.c, no work", "#f0c05a"),
         ("wlimit", "writing limit: responder.c + LMDB", "#d9822b")]

COLUMNS = 3
PANEL_W, PANEL_H = 330, 250         # one panel, its labels included
PLOT_LEFT, PLOT_TOP = 52, 34        # the plot area inside a panel
PLOT_W, PLOT_H = 262, 150
BAR_W, BAR_GAP, GROUP_GAP = 14, 2, 22
MARGIN_TOP, MARGIN_BOTTOM, MARGIN_SIDE = 96, 46, 16
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"


@dataclass(frozen=True)
class Group:
    """One cell: a connection count within a panel."""
    conns: int
    rates: dict[str, float]        # kind -> requests a second, measured ones only
    disturbed: bool


@dataclass(frozen=True)
class Panel:
    workload: str
    size: int | None               # None for a workload without a session
    groups: list[Group]

    @property
    def title(self) -> str:
        return self.workload if self.size is None else "%s, %d B" % (self.workload, self.size)


def load(path: Path) -> dict[str, Any]:
    with open(path) as source:
        data: dict[str, Any] = json.load(source)
    if not isinstance(data.get("results"), list) or "machine" not in data:
        raise ValueError("%s is not what compare.py --json writes" % path)
    return data


def newest(directory: Path = RESULTS) -> Path:
    """The full run with the latest recorded date."""
    runs = sorted(directory.glob("full-*.json"), key=lambda path: load(path)["machine"]["date"])
    if not runs:
        raise FileNotFoundError("no full-*.json in %s" % directory)
    return runs[-1]


def panels(results: list[dict[str, Any]]) -> list[Panel]:
    """The cells by workload and size, in the order compare.py measured them."""
    order: list[tuple[str, int | None]] = []
    groups: dict[tuple[str, int | None], list[Group]] = {}
    for cell in results:
        key = (cell["workload"], cell["size"] if cell["workload"] in SIZED else None)
        if key not in groups:
            order.append(key)
            groups[key] = []
        rates = {kind: float(cell[kind]["throughput"]) for kind, _, _ in KINDS
                 if isinstance(cell.get(kind), dict) and "throughput" in cell[kind]}
        disturbed = any(cell[kind].get("other_cpu_share", 0.0) > DISTURBED
                        for kind, _, _ in KINDS if isinstance(cell.get(kind), dict))
        groups[key].append(Group(cell["conns"], rates, disturbed))
    return [Panel(workload, size, groups[(workload, size)]) for workload, size in order]


def ratio(group: Group) -> str:
    """ours/stock as compare.py prints it, or '-'."""
    ours, stock = group.rates.get("ours"), group.rates.get("stock")
    if ours is None or not stock:
        return "-"
    return "%.2f" % (ours / stock)


def short(rate: float) -> str:
    """A rate for a bar's label: 1234 -> 1.2k, 123456 -> 123k."""
    if rate >= 1e6:
        return "%.2fM" % (rate / 1e6)
    if rate >= 1e5:
        return "%.0fk" % (rate / 1e3)
    if rate >= 1e3:
        return "%.1fk" % (rate / 1e3)
    return "%.0f" % rate


def scale(all_panels: list[Panel]) -> tuple[int, int]:
    """The decades the y axis spans: 10**low to 10**high."""
    rates = [rate for panel in all_panels for group in panel.groups
             for rate in group.rates.values() if rate > 0]
    if not rates:
        return 0, 1
    low, high = math.floor(math.log10(min(rates))), math.ceil(math.log10(max(rates)))
    return low, max(high, low + 1)


def decade(exponent: int) -> str:
    return {0: "1", 1: "10", 2: "100", 3: "1k", 4: "10k", 5: "100k",
            6: "1M", 7: "10M"}.get(exponent, "1e%d" % exponent)


def render(data: dict[str, Any], source: str) -> str:
    """The SVG text for one compare.py run; ``source`` names its file in the caption."""
    all_panels = panels(data["results"])
    low, high = scale(all_panels)
    rows = max(1, math.ceil(len(all_panels) / COLUMNS))
    width = 2 * MARGIN_SIDE + COLUMNS * PANEL_W
    height = MARGIN_TOP + rows * PANEL_H + MARGIN_BOTTOM
    machine = data["machine"]

    def y_of(rate: float) -> float:
        share = (math.log10(rate) - low) / (high - low)
        return PLOT_TOP + PLOT_H * (1 - min(max(share, 0.0), 1.0))

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="%s">' % (width, height, width, height, FONT),
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           '<text x="%d" y="24" font-size="17" font-weight="bold">Requests a second: ours, '
           "Postfix's stock tlsmgr and the machine's limit (log scale)</text>" % MARGIN_SIDE,
           '<text x="%d" y="44" font-size="12" fill="#333333">%s</text>' % (
               MARGIN_SIDE, escape("%s: run of %s, git %s, %s CPUs %s, Linux %s" % (
                   source, machine.get("date", "?"), machine.get("git_head", "?"),
                   machine.get("nproc", "?"), machine.get("cpu", "?"),
                   machine.get("kernel", "?"))))]
    # The legend: only the kinds this run measured.
    measured = {kind for panel in all_panels for group in panel.groups for kind in group.rates}
    tables = {"stock": str(data.get("stock_table", "?")).partition(":")[0],
              "ours": str(data.get("settings", {}).get("ours_table", "?")).partition(":")[0]}
    x = MARGIN_SIDE
    for kind, label, colour in KINDS:
        if kind not in measured:
            continue
        label = label.format(**tables)
        out.append('<rect x="%d" y="58" width="12" height="12" fill="%s"/>' % (x, colour))
        out.append('<text x="%d" y="69" font-size="12">%s</text>' % (x + 16, escape(label)))
        x += 24 + 7 * len(label)

    for index, panel in enumerate(all_panels):
        left = MARGIN_SIDE + (index % COLUMNS) * PANEL_W
        top = MARGIN_TOP + (index // COLUMNS) * PANEL_H
        out.append('<g transform="translate(%d,%d)">' % (left, top))
        out.append('<text x="%d" y="18" font-size="14" font-weight="bold">%s</text>'
                   % (PLOT_LEFT, escape(panel.title)))
        # Grid lines and labels at each decade, faint ones at 2 and 5.
        for exponent in range(low, high + 1):
            y = y_of(10.0 ** exponent)
            out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#bbbbbb" '
                       'stroke-width="1"/>' % (PLOT_LEFT, y, PLOT_LEFT + PLOT_W, y))
            out.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%s</text>'
                       % (PLOT_LEFT - 5, y + 4, decade(exponent)))
            for step in (2, 5):
                if exponent < high:
                    y = y_of(step * 10.0 ** exponent)
                    out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eeeeee" '
                               'stroke-width="1"/>' % (PLOT_LEFT, y, PLOT_LEFT + PLOT_W, y))
        bottom = PLOT_TOP + PLOT_H
        spans = [len(group.rates) * (BAR_W + BAR_GAP) - BAR_GAP for group in panel.groups]
        x = PLOT_LEFT + max(0, PLOT_W - sum(spans) - GROUP_GAP * (len(spans) - 1)) // 2
        for group, span in zip(panel.groups, spans):
            kinds = [(kind, colour) for kind, _, colour in KINDS if kind in group.rates]
            for number, (kind, colour) in enumerate(kinds):
                rate = group.rates[kind]
                bar_x = x + number * (BAR_W + BAR_GAP)
                y = y_of(rate)
                out.append('<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s">'
                           '<title>%s</title></rect>' % (
                               bar_x, y, BAR_W, bottom - y, colour,
                               escape("%s, %d connections, %s: %.0f req/s"
                                      % (panel.title, group.conns, kind, rate))))
                # The rate, written up the bar from just above its foot.
                label_x, label_y = bar_x + BAR_W / 2 + 4, bottom - 4
                out.append('<text x="%.1f" y="%.1f" font-size="9.5" fill="#000000" '
                           'transform="rotate(-90 %.1f %.1f)">%s</text>'
                           % (label_x, label_y, label_x, label_y, short(rate)))
            middle = x + span / 2
            out.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>'
                       % (middle, bottom + 15, "%d conn%s" % (group.conns,
                                                             "" if group.conns == 1 else "s")))
            out.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle" '
                       'font-weight="bold" fill="#1f77b4">&#215;%s%s</text>'
                       % (middle, bottom + 30, ratio(group), "*" if group.disturbed else ""))
            x += span + GROUP_GAP
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333333"/>'
                   % (PLOT_LEFT, bottom, PLOT_LEFT + PLOT_W, bottom))
        out.append("</g>")

    foot = height - MARGIN_BOTTOM + 18
    out.append('<text x="%d" y="%d" font-size="12" fill="#333333">%s</text>' % (
        MARGIN_SIDE, foot, escape(
            "Under each group: ours/stock (above 1: ours is faster).  * the cell's kept "
            "attempt was disturbed (other work over 0.10 of a CPU): a rough ratio.")))
    one = any(group.conns == 1 for panel in all_panels for group in panel.groups)
    out.append('<text x="%d" y="%d" font-size="12" fill="#333333">%s</text>' % (
        MARGIN_SIDE, foot + 16, escape(
            "Drawn by benchmarks/chart.py from the JSON of benchmarks/compare.py"
            + ("; one connection is bound by the round trip between two CPUs." if one
               else "."))))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", type=Path,
                        help="what compare.py --json wrote (default: the newest "
                             "benchmarks/results/full-*.json by its recorded date)")
    parser.add_argument("-o", "--output", type=Path,
                        help="the SVG file to write (default: standard output)")
    args = parser.parse_args(argv)
    path = args.json if args.json is not None else newest()
    data = load(path)
    # The caption names the file as given, or relative to the repository.
    try:
        source = str(path.resolve().relative_to(RESULTS.parent.parent))
    except ValueError:
        source = path.name
    svg = render(data, source)
    if args.output is None:
        sys.stdout.write(svg)
    else:
        args.output.write_text(svg)
        print("%s: %d panels from %s" % (args.output, len(panels(data["results"])), source),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
