"""The 14-day picture: an hour-by-day activity heatmap as inline SVG, rendered on the server."""

from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup, escape

CELL = 14
LABEL_W = 46
HEADER_H = 16


def heatmap_svg(heatmap: dict[str, Any], *, title: str) -> Markup:
    days = heatmap["days"]
    counts = heatmap["counts"]
    peak = max((n for row in counts for n in row), default=0)
    width = LABEL_W + 24 * CELL
    height = HEADER_H + len(days) * CELL
    parts = [
        (f'<svg class="heatmap" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}"'
         f' width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'),
        f"<title>{escape(title)}</title>",
    ]
    parts.extend(f'<text x="{LABEL_W + hour * CELL}" y="11" font-size="10" fill="#222">{hour}</text>' for hour in range(0, 24, 6))
    for r, day in enumerate(days):
        y = HEADER_H + r * CELL
        label = f"{day.month}/{day.day}"
        parts.append(f'<text x="0" y="{y + 11}" font-size="10" fill="#222">{label}</text>')
        for hour, n in enumerate(counts[r]):
            # sqrt scale: a few events in an hour should already show.
            level = math.sqrt(n / peak) if peak else 0.0
            fill = _blend(level)
            parts.append(
                f'<rect x="{LABEL_W + hour * CELL}" y="{y}" width="{CELL - 1}" height="{CELL - 1}" fill="{fill}">'
                f"<title>{label} {hour}:00 — {n}</title></rect>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- built here from numbers and the escaped title only


def _blend(level: float) -> str:
    # From a pale grey (no activity) to the app's dark blue (#1d4f91).
    lo, hi = (0xEE, 0xF1, 0xF5), (0x1D, 0x4F, 0x91)
    red, green, blue = (round(a + (b - a) * level) for a, b in zip(lo, hi, strict=True))
    return f"#{red:02x}{green:02x}{blue:02x}"
