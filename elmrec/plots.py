"""PNG figures for MLflow: training curves of a run, and metrics side by side across variants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def loss_curves(epochs: Sequence[Mapping[str, float]], out: Path, keys: Sequence[str] = ("train_loss", "valid_loss"),
                best_epoch: int | None = None) -> Path:
    """`loss_figure` as a PNG at `out`."""
    fig = loss_figure(epochs, keys, best_epoch)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def loss_figure(epochs: Sequence[Mapping[str, float]], keys: Sequence[str] = ("train_loss", "valid_loss"),
                best_epoch: int | None = None) -> Figure:
    """Line plot of `keys` per epoch, ticks on whole epochs only; a dotted line marks the best epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        points = [(e["epoch"], e[key]) for e in epochs if key in e]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    if best_epoch is not None:
        ax.axvline(best_epoch, linestyle=":", color="grey", label=f"best epoch {best_epoch}")
    shown = [e["epoch"] for e in epochs] + ([best_epoch] if best_epoch is not None else [])
    if shown:  # half an epoch of margin: even one epoch spans a whole number
        ax.set_xlim(min(shown) - 0.5, max(shown) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epoch 1, 2, … never 1.25
    ax.set(xlabel="epoch", ylabel="loss", title="training curves")
    ax.legend()
    fig.tight_layout()
    return fig


def metrics_by_variant(metrics: Mapping[str, Mapping[str, float]], out: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per variant ({variant: {metric: value}})."""
    variants = list(metrics)
    names = sorted({name for values in metrics.values() for name in values})
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    for k, variant in enumerate(variants):
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, [metrics[variant].get(name, 0.0) for name in names], width, label=variant)
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(names))], names)
    ax.set(title=title, ylabel="value")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
