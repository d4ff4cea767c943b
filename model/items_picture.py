"""One PNG of a few catalogue items: photo, title, TF-IDF keywords, resolved attributes and a colour bar."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from model.fashion import FashionItem
from model.image_features import PALETTE, ImageAttributes
from model.knowledge import Resolved

SWATCH = {"black": "#111111", "grey": "#8c8c8c", "white": "#f4f4f4", "red": "#d62728", "pink": "#f28cb1",
          "orange": "#ff8c1a", "brown": "#8c564b", "yellow": "#f2d600", "green": "#2ca02c", "teal": "#17becf",
          "blue": "#1f77b4", "navy": "#1a2a6c", "purple": "#8e44ad"}

Card = tuple[FashionItem, np.ndarray, Sequence[tuple[str, float]], ImageAttributes, Mapping[str, Resolved]]


def draw_items(cards: Sequence[Card], out: str | Path, columns: int = 2) -> Path:
    """Draw one card per item (photo left; title, keywords with F, attributes with their sources, photo facts
    and a stacked colour-distribution bar right) in a grid of ``columns`` and save it as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(cards) // columns)
    fig = plt.figure(figsize=(7.2 * columns, 3.3 * rows), dpi=110)
    grid = fig.add_gridspec(rows, columns * 2, width_ratios=[1, 3.2] * columns, hspace=0.3, wspace=0.12)
    for n, (item, photo, keywords, image, resolved) in enumerate(cards):
        r, c = divmod(n, columns)
        ax = fig.add_subplot(grid[r, 2 * c])
        ax.imshow(photo)
        ax.set_axis_off()
        ax.set_title(f"id {item.id}", fontsize=8)
        text = fig.add_subplot(grid[r, 2 * c + 1])
        text.set_axis_off()
        attributes = "; ".join(_attribute(rel, v) for rel, v in resolved.items())
        lines = [
            *_wrapped(item.title, 52, dict(fontsize=9.5, fontweight="bold")),
            (f"{item.master_category} > {item.sub_category} > {item.article_type}", dict(fontsize=8)),
            *_wrapped("keywords: " + ", ".join(f"{w} ({f:.2f})" for w, f in keywords), 74,
                      dict(fontsize=8, color="#1f4e79")),
            *_wrapped(attributes, 74, dict(fontsize=7.5)),
            (f"photo {image.width}x{image.height} px, aspect {image.aspect:.2f}, white background "
             f"{image.white_background:.0%}, dominant {'/'.join(image.dominant)}", dict(fontsize=7.5)),
        ]
        y = 1.0
        for line, style in lines:
            text.text(0.02, y, line, va="top", transform=text.transAxes, **style)
            y -= 0.105
        bar = text.inset_axes([0.02, max(0.0, y - 0.17), 0.96, 0.14])
        left = 0.0
        for name in PALETTE:
            share = image.colours[name]
            if share > 0:
                bar.barh(0, share, left=left, color=SWATCH[name], edgecolor="#555555", linewidth=0.3)
                if share >= 0.08:
                    bar.text(left + share / 2, 0, name, ha="center", va="center", fontsize=6.5,
                             color="white" if name in {"black", "navy", "blue", "brown", "purple"} else "black")
                left += share
        bar.set_xlim(0, 1)
        bar.set_axis_off()
    fig.suptitle("Fashion items: TF-IDF keywords, resolved attributes (sources), photo colour distribution "
                 "(foreground pixels)", fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def _attribute(relation: str, resolved: Resolved) -> str:
    """``colour: black (title+image; not blue)``: the value, who backs it, the candidates it beat."""
    beaten = [c for c in resolved.candidates if c != resolved.value]
    against = f"; not {', '.join(beaten)}" if beaten else ""
    return f"{relation}: {resolved.value} ({'+'.join(resolved.sources)}{against})"


def _wrapped(text: str, width: int, style: dict) -> list[tuple[str, dict]]:
    import textwrap

    return [(line, style) for line in textwrap.wrap(text, width)]
