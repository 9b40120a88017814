"""Train stage: fine-tune ELMRec; cached on its fingerprint, with a Prefect progress artifact per epoch.

MLflow logging happens in tasks.tracking.record_variant_task, from the history.json this stage writes,
so a cached stage still shows up complete in every flow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from elmrec.config import Settings
from elmrec.paths import WorkPaths
from elmrec.recommenders import max_epochs, train_recommender
from elmrec.stages import recording
from tasks.caching import stage_cache


@task(name="train", cache_policy=stage_cache("train"), persist_result=True)
def train_task(settings: Settings, resume: bool = True) -> Path:
    """histories, candidates, graph -> checkpoint/ (best model), last/, history.json of the run's recommender
    (ELMRec, SASRec or LightGCN); returns the history path.

    resume=True continues an interrupted attempt (same settings, same result); resume=False trains from scratch.
    """
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"train {settings.recommender}: epochs done / max_epochs")

    def on_epoch(record: Any) -> None:
        logger.info("epoch %d: train loss %.4f, valid loss %.4f%s, %.1f samples/s", record.epoch, record.train_loss,
                    record.valid_loss, " (best)" if record.best else "", record.samples_per_s)
        update_progress_artifact(progress, 100.0 * record.epoch / max_epochs(settings))

    with recording(settings, "train"):
        result = train_recommender(settings, WorkPaths.from_settings(settings), resume=resume, on_epoch=on_epoch)
    update_progress_artifact(progress, 100.0)
    logger.info("best epoch %d, checkpoint %s, pretrained=%s", result.best_epoch, result.run.checkpoint,
                result.pretrained)
    return result.run.history
