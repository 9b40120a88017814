"""Figures for MLflow: whole-epoch ticks on loss curves, PNG files that open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from elmrec.plots import loss_curves, loss_figure, metrics_by_variant

EPOCHS = [{"epoch": 1, "train_loss": 3.0, "valid_loss": 3.2}, {"epoch": 2, "train_loss": 2.5, "valid_loss": 3.1},
          {"epoch": 3, "train_loss": 2.2, "valid_loss": 3.15}]


@pytest.mark.parametrize("epochs", [EPOCHS[:1], EPOCHS[:2], EPOCHS])
def test_loss_curves_tick_whole_epochs_only(epochs: list[dict[str, float]]) -> None:
    fig = loss_figure(epochs, best_epoch=epochs[-1]["epoch"])
    ax = fig.axes[0]
    fig.canvas.draw()
    low, high = ax.get_xlim()
    shown = [tick for tick in ax.get_xticks() if low <= tick <= high]
    assert shown and all(float(tick).is_integer() for tick in shown), shown
    assert {round(t) for t in shown} >= {int(e["epoch"]) for e in epochs}  # every epoch has its tick
    assert [line.get_label() for line in ax.get_lines()] == ["train_loss", "valid_loss",
                                                             f"best epoch {epochs[-1]['epoch']}"]
    plt.close(fig)


def test_figures_are_written_as_png(tmp_path: Path) -> None:
    for path in (loss_curves(EPOCHS, tmp_path / "loss.png", best_epoch=2),
                 metrics_by_variant({"elmrec": {"hr@10": 0.2}, "popularity": {"hr@10": 0.25}}, tmp_path / "m.png",
                                    "direct (test)")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []  # every figure closed
