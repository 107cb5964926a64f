"""Saving the recipes' matplotlib figures (headless)."""
from __future__ import annotations

from pathlib import Path


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Lay out, write ``path`` as PNG, close the figure and say where it went."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"wrote {path}")
    return path
