"""Self-contained HTML pages with inline SVG charts: no JavaScript, no network, opens anywhere.

Reports (backtest, the supervisor's digest) are read by people who will not install anything; an
inline SVG renders in every browser, mail client and PDF printer, and diffs as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["bar_chart", "line_chart", "page", "table"]

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


def _short(name: str, width: int) -> str:
    """A legend cut to `width`, keeping its end when it is a tag such as " (A)": two labels that differ only
    there (an A/B comparison of long paths) read the same when cut at the front."""
    if len(name) <= width:
        return name
    head, sep, tag = name.rpartition(" (")
    if sep and tag.endswith(")") and len(tag) <= 4:
        return head[: max(width - len(tag) - 3, 1)] + "… (" + tag
    return name[: width - 1] + "…"


def _nice_max(v: float) -> float:
    """A round top for the axis, divisible by 4 so the quarter ticks of counts stay whole numbers."""
    if v <= 0:
        return 4.0
    step = 10 ** (len(str(int(v))) - 1)
    top = ((int(v) // step) + 1) * step
    return float(-(-top // 4) * 4)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"


def line_chart(
    series: Mapping[str, Sequence[float]], labels: Sequence[str], *, title: str, width: int = 760, height: int = 260
) -> str:
    """One polyline per series over shared x labels (dates); a legend names each series."""
    left, right, top, bottom = 48, 12, 28, 34
    w, h = width - left - right, height - top - bottom
    top_value = _nice_max(max((max(v) for v in series.values() if v), default=0))
    n = max(len(labels), 2)
    out = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
    ]
    for k in range(5):  # horizontal grid with values
        y = top + h - h * k / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        tick = _num(top_value * k / 4)
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{tick}</text>')
    stride = max(1, len(labels) // 6)
    ticks = list(range(0, len(labels), stride))
    if ticks and len(labels) - 1 - ticks[-1] >= stride / 2:  # the last label, unless it would overlap
        ticks.append(len(labels) - 1)
    for i in ticks:
        if 0 <= i < len(labels):
            x = left + w * i / (n - 1)
            anchor = "end" if i == len(labels) - 1 and i else "start" if i == 0 else "middle"  # never cut off
            out.append(
                f'<text x="{x:.1f}" y="{height - 12}" class="axis" text-anchor="{anchor}">{escape(labels[i])}</text>'
            )
    for s, (name, values) in enumerate(series.items()):
        pts = " ".join(f"{left + w * i / (n - 1):.1f},{top + h - h * v / top_value:.1f}" for i, v in enumerate(values))
        color = PALETTE[s % len(PALETTE)]
        out.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        lx = left + 8 + s * 150
        out.append(f'<rect x="{lx}" y="{top - 4}" width="10" height="3" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="{top}" class="legend">{escape(_short(name, 20))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(groups: Mapping[str, Sequence[tuple[str, float]]], *, title: str, width: int = 760, bar: int = 18) -> str:
    """Horizontal bars, one row per label; several groups (A/B) are drawn side by side per row."""
    labels: list[str] = []
    for items in groups.values():
        for label, _ in items:
            if label not in labels:
                labels.append(label)
    values = {g: dict(items) for g, items in groups.items()}
    top_value = _nice_max(max((v for items in groups.values() for _, v in items), default=0))
    left, top = 150, 28
    w = width - left - 60
    row = bar * len(groups) + 6
    height = top + row * len(labels) + 10
    out = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<text x="8" y="16" class="title">{escape(title)}</text>',
    ]
    if len(groups) > 1:  # which colour is which
        for g, name in enumerate(groups):
            lx = left + 120 + g * 170
            out.append(f'<rect x="{lx}" y="8" width="10" height="10" fill="{PALETTE[g % len(PALETTE)]}"/>')
            out.append(f'<text x="{lx + 14}" y="17" class="legend">{escape(_short(name, 24))}</text>')
    for r, label in enumerate(labels):
        y0 = top + r * row
        out.append(
            f'<text x="{left - 6}" y="{y0 + row / 2 + 3:.1f}" class="axis" text-anchor="end">'
            f"{escape(label[:22])}</text>"
        )
        for g, name in enumerate(groups):
            v = values[name].get(label, 0)
            y = y0 + g * bar
            color = PALETTE[g % len(PALETTE)]
            out.append(f'<rect x="{left}" y="{y}" width="{w * v / top_value:.1f}" height="{bar - 3}" fill="{color}">'
                       f"<title>{escape(name)}: {_num(v)}</title></rect>")  # fmt: skip
            out.append(f'<text x="{left + w * v / top_value + 4:.1f}" y="{y + bar - 6}" class="axis">{_num(v)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, caption: str | None = None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if isinstance(c, int | float) else ""}">{escape(str(c))}</td>' for c in r)
        + "</tr>"
        for r in rows
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#111}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 16px} th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} caption{text-align:left;color:#555;padding:4px 0}
.chart .title{font-weight:600;font-size:13px} .chart .axis{font-size:11px;fill:#555} .chart .legend{font-size:11px}
.chart .grid{stroke:#eee} .meta{color:#555}
"""


def page(title: str, body: str, *, meta: str = "") -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="meta">{escape(meta)}</p>{body}</body></html>\n'
    )
