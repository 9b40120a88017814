"""The recommenders the pipeline trains, chosen by `settings.recommender`: the one place that tells them apart.

Every recommender trains into `WorkPaths.run(settings)` (checkpoint/, last/, history.json; attempt/ while it
trains) and evaluates into `RunPaths.evaluation(settings)` (metrics.json `{task: {decoder: metrics}}` and
predictions_<task>_<decoder>.parquet), and its epoch records share the fields the pipeline reports (epoch,
train_loss, valid_loss, best, samples_per_s). So the stages, MLflow and the comparison table never special-case
one: ELMRec (elmrec.train, elmrec.evaluate) or a classic baseline, SASRec and LightGCN (elmrec.classic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from elmrec import distributed
from elmrec.classic import evaluate_classic, section, train_classic
from elmrec.config import Settings
from elmrec.evaluate import evaluate_model
from elmrec.paths import WorkPaths
from elmrec.train import train


def train_recommender(settings: Settings, paths: WorkPaths, resume: bool = True,
                      on_epoch: Callable[[Any], None] | None = None) -> Any:
    """Train the run's recommender (resume=True continues an interrupted attempt); returns its result (fields
    shared by all: best_epoch, run, pretrained). ELMRec trains in train.nproc processes (elmrec.distributed) when
    asked to; the classic baselines always in this one."""
    if settings.recommender == "elmrec":
        if distributed.wanted(settings):
            return distributed.launch(settings, paths, resume=resume, on_epoch=on_epoch)
        return train(settings, paths, resume=resume, on_epoch=on_epoch)
    return train_classic(settings, paths, resume=resume, on_epoch=on_epoch)


def evaluate_recommender(settings: Settings, paths: WorkPaths, allow_unfinished: bool = False,
                         on_task: Callable[[str, dict[str, Any], float], None] | None = None) -> dict[str, Any]:
    """Evaluate the run's trained recommender on the evaluation split; returns {task: {decoder: metrics}}."""
    if settings.recommender == "elmrec":
        return evaluate_model(settings, paths, allow_unfinished=allow_unfinished, on_task=on_task)
    return evaluate_classic(settings, paths, allow_unfinished=allow_unfinished)


def max_epochs(settings: Settings) -> int:
    """The upper bound on the run's training epochs (for progress reporting)."""
    return settings.train.max_epochs if settings.recommender == "elmrec" else section(settings).max_epochs
