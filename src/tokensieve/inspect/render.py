"""Drawing scores: a heat colour scale, coloured terminal text (rich), a self-contained HTML
heat map with the score on hover, and matplotlib set up for PNG files."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UsageError

# light yellow -> orange -> dark red: low scores stay readable, high ones stand out
_STOPS = np.array([[255, 255, 255], [255, 237, 160], [254, 178, 76], [240, 59, 32],
                   [165, 0, 38]], dtype=float)


def heat_scale(values: np.ndarray, high: float | None = None) -> tuple[np.ndarray, float]:
    """Values mapped to [0, 1] (0 = the least surprising, 1 = ``high`` and above) and the
    ``high`` used: by default the 95th percentile, so one outlier does not wash out the rest."""
    values = np.asarray(values, dtype=float)
    if high is None:
        high = float(np.quantile(values, 0.95)) if len(values) else 1.0
    high = max(high, 1e-9)
    return np.clip(values / high, 0.0, 1.0), high


def heat_rgb(q: float) -> tuple[int, int, int]:
    """The colour of a value already scaled to [0, 1]."""
    pos = float(np.clip(q, 0.0, 1.0)) * (len(_STOPS) - 1)
    i = min(int(pos), len(_STOPS) - 2)
    rgb = _STOPS[i] + (pos - i) * (_STOPS[i + 1] - _STOPS[i])
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def pieces(text: str, spans: Sequence[tuple[int, int]], values: Sequence[float]
           ) -> list[tuple[int, int, float]]:
    """Scored spans as non-overlapping (start, end, value) pieces in text order: tokens that
    share characters (a multi-byte character split over two byte-level tokens) are joined and
    their values added, so a character is never drawn twice or cut in half."""
    out: list[list] = []
    for (a, b), v in zip(spans, values, strict=True):
        a, b = int(a), int(b)
        if b <= a:
            if out:
                out[-1][2] += float(v)
            continue
        if out and a < out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
            out[-1][2] += float(v)
        else:
            out.append([a, b, float(v)])
    return [(a, b, v) for a, b, v in out if b <= len(text)]


def terminal(text: str, spans, values, *, high: float | None = None, unit: str = "nats"):
    """A rich ``Text`` of ``text`` with every scored span on a heat-coloured background."""
    from rich.text import Text

    parts = pieces(text, spans, values)
    scaled, high = heat_scale(np.array([v for _, _, v in parts]), high)
    out, pos = Text(), 0
    for (a, b, _), q in zip(parts, scaled, strict=True):
        out.append(text[pos:a])
        r, g, bl = heat_rgb(q)
        fg = "white" if q > 0.7 else "black"
        out.append(text[a:b], style=f"{fg} on rgb({r},{g},{bl})")
        pos = b
    out.append(text[pos:])
    return out, high


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
.text { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
        line-height: 1.9; border: 1px solid #ddd; padding: 1em; border-radius: 4px; }
.text span { position: relative; border-radius: 2px; }
.text span:hover { outline: 1px solid #333; }
.text span:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.6em;
  background: #222; color: #fff; padding: 2px 6px; border-radius: 3px; white-space: pre;
  font-size: 12px; z-index: 10; pointer-events: none; }
.legend span { display: inline-block; width: 2.2em; height: 1em; vertical-align: middle; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 2px 10px;
  text-align: left; border-bottom: 1px solid #eee; }
"""


def html_heat(text: str, spans, values, tips: Sequence[str], *, high: float | None = None
              ) -> tuple[str, float]:
    """The inner HTML of a heat map: one ``<span>`` per piece with its tooltip."""
    order = []
    merged_tips: list[str] = []
    for (a, b), tip in zip(spans, tips, strict=True):  # tips follow the same joining as pieces
        if order and int(a) < order[-1][1]:
            order[-1][1] = max(order[-1][1], int(b))
            merged_tips[-1] = merged_tips[-1] + "\n" + tip
        elif int(b) > int(a):
            order.append([int(a), int(b)])
            merged_tips.append(tip)
    parts = pieces(text, spans, values)
    scaled, high = heat_scale(np.array([v for _, _, v in parts]), high)
    out, pos = [], 0
    for (a, b, _), q, tip in zip(parts, scaled, merged_tips, strict=True):
        out.append(html.escape(text[pos:a]))
        r, g, bl = heat_rgb(q)
        fg = "#fff" if q > 0.7 else "#000"
        out.append(f'<span style="background:rgb({r},{g},{bl});color:{fg}" '
                   f'data-tip="{html.escape(tip, quote=True)}">{html.escape(text[a:b])}</span>')
        pos = b
    out.append(html.escape(text[pos:]))
    return "".join(out), high


def legend_html(high: float, unit: str) -> str:
    cells = "".join(
        f'<span style="background:rgb{heat_rgb(q)}"></span>' for q in np.linspace(0, 1, 9)
    )
    return f'<p class="legend">0 {cells} &ge; {high:.2f} {html.escape(unit)}</p>'


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML page (no scripts, no external files)."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only), or a one-line error."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("PNG output needs matplotlib; install it with: "
                         "pip install matplotlib (or pip install -e .[dev])") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig, target: Path, dpi: int) -> Path:
    """Lay out, write and close a figure (a character the font lacks is drawn as a box,
    without a warning per glyph)."""
    import warnings

    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(target, dpi=dpi)
    plt.close(fig)
    return target


def writable(path: str | Path, what: str) -> Path:
    """``path`` as a Path whose folder exists, or a one-line error."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{what} path {str(path)!r} is a folder; give a file name inside it.")
    if not p.parent.exists():
        raise UsageError(f"cannot write {what} to {str(path)!r}: folder {str(p.parent)!r} does "
                         "not exist; create it first.")
    return p
