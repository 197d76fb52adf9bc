#!/usr/bin/env python3
"""Draw the cost curves of bench/curves.sh as one SVG, and print their table as Markdown.

Usage:
    python3 bench/plot.py POINTS.json OUT.svg

POINTS.json is a list of objects with at least "bench", "tool", "size" and "seconds" (see
bench/curves.sh; "unit", "stddev", "runs" and "load" are used when present). The SVG has one
panel per bench, log-log axes (size against wall time), one line per tool with markers, a
legend, and a dashed "linear" reference (time proportional to size, through the first point
of the panel's first tool). The table on stdout gives, per bench and tool and size: the time,
the time per unit of size, the growth factor from the previous size (per doubling when the
sizes double), the least-squares slope (marginal cost per unit) and the log-log exponent.
Standard library only. Exits 2 on bad input.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf"]
MARKERS = ["circle", "square", "triangle", "diamond"]
PANEL_W, PANEL_H = 520, 400
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 78, 16, 34, 100
LEGEND_ROW = 15
COLS = 2


def fit(xy):
    """Least-squares line through [(x, y)]: (slope, intercept)."""
    n = len(xy)
    if n < 2:
        raise ValueError("a fit needs at least two points")
    mx = sum(x for x, _ in xy) / n
    my = sum(y for _, y in xy) / n
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    if sxx == 0:
        raise ValueError("a fit needs two different sizes")
    slope = sum((x - mx) * (y - my) for x, y in xy) / sxx
    return slope, my - slope * mx


def exponent(xy):
    """Least-squares slope in log-log space: 1 is linear, < 1 sublinear."""
    return fit([(math.log(x), math.log(y)) for x, y in xy])[0]


def fmt_seconds(s, specs):
    """Seconds in µs, ms or s, each with its format spec from `specs`."""
    if s < 1e-3:
        return f"{s * 1e6:{specs[0]}} µs"
    if s < 1:
        return f"{s * 1e3:{specs[1]}} ms"
    return f"{s:{specs[2]}} s"


def fmt_time(s):
    return fmt_seconds(s, (".0f", ".1f", ".2f"))


def fmt_tick(s):
    return fmt_seconds(s, ("g", "g", "g"))


def fmt_per(s):
    if s < 0:
        return "−" + fmt_per(-s)
    if s < 1e-6:
        return f"{s * 1e9:.1f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    return f"{s * 1e3:.2f} ms"


def fmt_size(n):
    if n >= 1000:
        return f"{n / 1000:.3g}k"
    return str(n)


def ticks(lo, hi):
    """Tick values on a log axis: 1-2-5 steps in [lo, hi], thinned to at most 8."""
    out = []
    e = math.floor(math.log10(lo)) - 1
    while 10 ** e <= hi * 10:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= v <= hi:
                out.append(v)
        e += 1
    while len(out) > 8:
        out = out[::2]
    return out


def die(msg):
    print(f"plot.py: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        pts = json.load(open(path))
    except (OSError, json.JSONDecodeError) as e:
        die(f"cannot read {path}: {e}")
    if not isinstance(pts, list) or not pts:
        die(f"{path}: expected a non-empty JSON list of points")
    for i, p in enumerate(pts):
        if not isinstance(p, dict):
            die(f"{path}: point {i} is not an object")
        for k in ("bench", "tool", "size", "seconds"):
            if k not in p:
                die(f"{path}: point {i} has no '{k}'")
        if not all(isinstance(p[k], (int, float)) and not isinstance(p[k], bool) and p[k] > 0
                   and math.isfinite(p[k]) for k in ("size", "seconds")):
            die(f"{path}: point {i}: size and seconds must be positive numbers")
    return pts


def group(pts):
    """{bench: {tool: [(size, seconds, point)]}} in first-seen order."""
    out = {}
    for p in pts:
        out.setdefault(p["bench"], {}).setdefault(p["tool"], []).append(
            (p["size"], p["seconds"], p))
    for tools in out.values():
        for v in tools.values():
            v.sort(key=lambda t: t[0])
    return out


def marker(kind, x, y, colour):
    r = 4.5
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"/>'
    if kind == "square":
        return (f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" '
                f'fill="{colour}"/>')
    if kind == "triangle":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x - r - 0.5:.1f},{y + r:.1f} '
                f'{x + r + 0.5:.1f},{y + r:.1f}" fill="{colour}"/>')
    return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},'
            f'{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}" fill="{colour}"/>')


def panel(bench, tools, ox, oy):
    out = []
    sizes = [s for v in tools.values() for s, _, _ in v]
    times = [t for v in tools.values() for _, t, _ in v]
    first = next(iter(tools.values()))
    # the linear reference spans the same sizes; include it in the y range
    ref = [(s, first[0][1] * s / first[0][0]) for s in (min(sizes), max(sizes))]
    times += [t for _, t in ref]
    xlo, xhi = min(sizes) / 1.25, max(sizes) * 1.25
    ylo, yhi = min(times) / 1.6, max(times) * 1.6
    pw = PANEL_W - MARGIN_L - MARGIN_R
    ph = PANEL_H - MARGIN_T - MARGIN_B
    x0, y0 = ox + MARGIN_L, oy + MARGIN_T

    def X(v):
        return x0 + (math.log(v) - math.log(xlo)) / (math.log(xhi) - math.log(xlo)) * pw

    def Y(v):
        return y0 + ph - (math.log(v) - math.log(ylo)) / (math.log(yhi) - math.log(ylo)) * ph

    unit = first[0][2].get("unit", "size")
    out.append(f'<text x="{ox + PANEL_W / 2:.0f}" y="{oy + 20}" text-anchor="middle" '
               f'font-weight="bold" font-size="14">{escape(bench)}</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" '
               f'stroke="#444"/>')
    for v in sorted(set(sizes)):
        x = X(v)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + ph + 15}" text-anchor="middle" '
                   f'font-size="11">{fmt_size(v)}</text>')
    for v in ticks(ylo, yhi):
        y = Y(v)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end" '
                   f'font-size="11">{escape(fmt_tick(v))}</text>')
    out.append(f'<text x="{x0 + pw / 2:.0f}" y="{y0 + ph + 32}" text-anchor="middle" '
               f'font-size="12">{escape(unit)} (log)</text>')
    out.append(f'<text transform="translate({ox + 16},{y0 + ph / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle" font-size="12">wall time (log)</text>')
    # dashed linear reference
    (sa, ta), (sb, tb) = ref
    out.append(f'<line x1="{X(sa):.1f}" y1="{Y(ta):.1f}" x2="{X(sb):.1f}" y2="{Y(tb):.1f}" '
               f'stroke="#888" stroke-dasharray="6,4"/>')
    legend = [("linear (∝ size)", "#888", None, True)]
    for i, (tool, v) in enumerate(tools.items()):
        c, m = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        pts = " ".join(f"{X(s):.1f},{Y(t):.1f}" for s, t, _ in v)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        for s, t, _ in v:
            out.append(marker(m, X(s), Y(t), c))
        legend.append((tool, c, m, False))
    # legend under the axis, two columns
    for i, (text, c, m, dashed) in enumerate(legend):
        lx = x0 + (i % 2) * (pw // 2)
        ly = y0 + ph + 50 + (i // 2) * LEGEND_ROW
        if dashed:
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{c}" '
                       f'stroke-dasharray="6,4"/>')
        else:
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{c}" '
                       f'stroke-width="2"/>')
            out.append(marker(m, lx + 11, ly, c))
        out.append(f'<text x="{lx + 28}" y="{ly + 4}" font-size="11">{escape(text)}</text>')
    return out


def svg(groups):
    n = len(groups)
    rows = (n + COLS - 1) // COLS
    w, h = PANEL_W * min(n, COLS), PANEL_H * rows
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" font-family="sans-serif">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for i, (bench, tools) in enumerate(groups.items()):
        out += panel(bench, tools, (i % COLS) * PANEL_W, (i // COLS) * PANEL_H)
    if n % COLS:  # a note in the free cell: what the lines are, and how loaded the machine was
        loads = [float(str(p.get("load", "")).split(" ")[0])
                 for tools in groups.values() for v in tools.values() for _, _, p in v
                 if str(p.get("load", "")).split(" ")[0].replace(".", "", 1).isdigit()]
        note = ["Wall time against input size, log-log, each size",
                "measured with its peer in the same run (bench/curves.sh).",
                "Dashed: time proportional to size through vakt's",
                "first point; flatter lines have a fixed cost that",
                "larger inputs amortise."]
        if loads:
            note.append(f"Load average (1 min) during the run: {min(loads):g}–{max(loads):g}"
                        " on 2 cores.")
        x, y = (n % COLS) * PANEL_W + MARGIN_L, (n // COLS) * PANEL_H + MARGIN_T + 20
        for j, line in enumerate(note):
            out.append(f'<text x="{x}" y="{y + j * 18}" font-size="12" fill="#333">'
                       f'{escape(line)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def table(groups):
    lines = ["| bench | tool | size | load (1 min) | time | time / size | growth from previous size |"
             " per unit (slope) | exponent |",
             "|---|---|---|---|---|---|---|---|---|"]
    for bench, tools in groups.items():
        for tool, v in tools.items():
            xy = [(s, t) for s, t, _ in v]
            slope = exp = ""
            if len({s for s, _ in xy}) >= 2:
                slope = fmt_per(fit(xy)[0])
                exp = f"{exponent(xy):.2f}"
            prev = None
            for i, (s, t, p) in enumerate(v):
                unit = p.get("unit", "")
                growth = ""
                if prev is not None:
                    k = s / prev[0]
                    growth = f"{t / prev[1]:.2f}×" + ("" if abs(k - 2) < 0.01 else f" (size {k:.2f}×)")
                last = i == len(v) - 1
                lines.append(
                    f"| {bench} | {tool} | {s:,} {unit} | {str(p.get('load', '')).split(' ')[0]} | {fmt_time(t)} | "
                    f"{fmt_per(t / s)} | {growth} | {slope if last else ''} | "
                    f"{exp if last else ''} |")
                prev = (s, t)
    return "\n".join(lines)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    groups = group(load(argv[1]))
    with open(argv[2], "w") as f:
        f.write(svg(groups))
    print(table(groups))


if __name__ == "__main__":
    main(sys.argv)
