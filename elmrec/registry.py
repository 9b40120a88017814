"""A trained model as an MLflow model that recommends: a `pyfunc` wrapper around elmrec.recommend, logged into a
model's child run and registered as `elmrec-<dataset>` (`models:/elmrec-beauty/N`). With elmrec.tracking, the
only modules that import mlflow.

    model = mlflow.pyfunc.load_model("models:/elmrec-beauty/1")
    model.predict(pd.DataFrame({"user": ["A1YJEY40YUW4SE"]}), params={"k": 10})   # user, rank, item, score

The logged model is self-contained and works offline: its one artifact is a bundle of the run's files
(recommend.ModelFiles.bundle: checkpoint, tokenizer, graph, ID maps and histories), its code is this package
(`code_paths`), and its requirements are pinned to this environment's versions (listed, not inferred: inferring
loads the model once more). `mlflow models serve --env-manager local -m models:/elmrec-beauty/1` answers
`POST /invocations` with `{"dataframe_records": [{"user": "A1YJEY40YUW4SE"}], "params": {"k": 5}}`.

A checkpoint is registered once: a version carries the digest of what it was made from (the training's
history.json, the checkpoint's path, the decoding settings), and logging the same again returns that version.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import polars as pl
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema
from packaging.requirements import Requirement

import elmrec
from elmrec import recommend, tracking
from elmrec.config import EvalSettings, Settings
from elmrec.paths import WorkPaths
from elmrec.shapes import digest

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in its run: runs:/<run id>/model
BUNDLE = "bundle"  # the model's one artifact
DEFAULT_K = 10
DEFAULT_PRECISION = EvalSettings().precision  # ELMRec's search: eval.precision's default
DIGEST_TAG = "elmrec.model_digest"  # on a model version: what it was made from
REGISTERED_TAG = "elmrec.registered_model"  # on a model's run: the URI of its registered version
NOT_SERVING = {"prefect", "prefect-dask", "matplotlib"}  # elmrec's requirements the model does not need


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """`predict(users, params={"k": 10, "precision": "fp32"})`: a DataFrame (user, rank, item, score), k rows per
    user, history excluded; ELMRec searches in `precision` (fp32 | bf16, as eval.precision). Users: a DataFrame with
    a `user` column (or one column), or a list; reviewer IDs or user numbers."""

    def load_context(self, context: Any) -> None:
        self.recommender = recommend.load(recommend.ModelFiles.read(Path(context.artifacts[BUNDLE])))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", DEFAULT_K))
        recommender = self.recommender.in_precision(str((params or {}).get("precision", DEFAULT_PRECISION)))
        return recommender.recommend(users_of(model_input), k).to_pandas()


def users_of(model_input: Any) -> list[str | int]:
    """The user IDs of a predict input: the `user` column of a DataFrame (else its only column), a list or an
    array; nested lists (a JSON row holding a list) flattened."""
    if isinstance(model_input, pd.DataFrame):
        if "user" not in model_input.columns and len(model_input.columns) != 1:
            raise ValueError(f"expected a `user` column, got columns {list(model_input.columns)}")
        model_input = model_input["user" if "user" in model_input.columns else model_input.columns[0]]
    if isinstance(model_input, dict):
        model_input = model_input.get("user", [])
    values = list(np.asarray(model_input, dtype=object).ravel()) if not isinstance(model_input, list) else model_input
    flat: list[str | int] = []
    for value in values:
        flat.extend(users_of(list(value)) if isinstance(value, (list, tuple, np.ndarray)) else [_plain(value)])
    return flat


def _plain(value: Any) -> str | int:
    """A user ID as str or int (numpy scalars and whole floats of JSON included)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"not a user ID: {value!r}")
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    return str(value)


def signature() -> ModelSignature:
    """Users in (any one column), the recommendation table out, `k` and `precision` as parameters."""
    outputs = Schema([ColSpec("string", "user"), ColSpec("integer", "rank"), ColSpec("string", "item"),
                      ColSpec("double", "score")])
    return ModelSignature(inputs=Schema([ColSpec(AnyType())]), outputs=outputs,
                          params=ParamSchema([ParamSpec("k", "long", DEFAULT_K),
                                              ParamSpec("precision", "string", DEFAULT_PRECISION)]))


def requirements() -> list[str]:
    """elmrec's own requirements but the pipeline's, pinned to the installed versions (local labels dropped)."""
    pinned = []
    for line in importlib.metadata.requires("elmrec") or []:
        requirement = Requirement(line)
        if requirement.marker is not None or requirement.name in NOT_SERVING:
            continue  # extras (dev tools) and what only the pipeline uses
        pinned.append(f"{requirement.name}=={importlib.metadata.version(requirement.name).split('+')[0]}")
    return pinned


def registered_name(settings: Settings) -> str:
    return f"elmrec-{settings.data.dataset}"


def model_digest(files: recommend.ModelFiles, settings: Settings) -> str:
    """What a model version is made from: the run's finished training (its history.json: every retraining
    writes another), where its checkpoint lies, and the settings of its decoding."""
    history = WorkPaths.from_settings(settings).run(settings).history
    return digest({"checkpoint": str(files.checkpoint), "history": history.read_text(),
                   "recommender": files.recommender, "max_history": files.max_history, "beams": files.beams}, 16)


def log_model(settings: Settings, run_id: str, tags: dict[str, str] | None = None) -> ModelVersion:
    """Log the finished run of `settings` into MLflow run `run_id` as a pyfunc model (`runs:/<run_id>/model`),
    registered as `elmrec-<dataset>` with `tags` (and the digest) on the version; the existing version when this
    checkpoint is registered already. The run's tag `elmrec.registered_model` names the version's URI. Call with
    MLflow pointed at the store (tracking.configure); the run is left FINISHED (tracking.finish may close it
    again with its real end time)."""
    files = recommend.ModelFiles.of_run(settings)
    name, made_from = registered_name(settings), model_digest(files, settings)
    client = mlflow.MlflowClient()
    version = registered_version(name, made_from)
    if version is not None:
        log.info("MLflow: %s version %s holds this checkpoint already", name, version.version)
    else:
        version = _log_new(files, name, run_id, {**(tags or {}), DIGEST_TAG: made_from})
    client.set_tag(run_id, REGISTERED_TAG, f"models:/{version.name}/{version.version}")
    return version


def _log_new(files: recommend.ModelFiles, name: str, run_id: str, tags: dict[str, str]) -> ModelVersion:
    """Log and register the model of `files` (a bundle of them: self-contained) into run `run_id`."""
    example = pd.DataFrame({"user": recommend.Catalogue.load(files.data).reviewer_ids[:1]})
    # the run made active (in this thread only) so that the logged model joins the run's experiment
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        bundle = Path(tmp) / BUNDLE
        files.bundle(bundle)
        info = mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=RecommenderModel(),
                                       artifacts={BUNDLE: str(bundle)}, code_paths=[str(Path(elmrec.__file__).parent)],
                                       signature=signature(), input_example=(example, {"k": DEFAULT_K}),
                                       pip_requirements=requirements(), registered_model_name=name)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    log.info("MLflow: logged the %s model of run %s as models:/%s/%s", files.recommender, run_id, name, version)
    return client.get_model_version(name, version)


def registered_version(name: str, made_from: str) -> ModelVersion | None:
    """The latest version of registered model `name` whose digest is `made_from`, or None."""
    try:
        found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and tags.`{DIGEST_TAG}` = "
                                                            f"'{made_from}'")
    except MlflowException:
        return None  # no such registered model yet
    return max(found, key=lambda v: int(v.version), default=None)


def recommend_from(settings: Settings, model_uri: str, users: list[str | int], k: int = DEFAULT_K) -> pl.DataFrame:
    """recommend.RECOMMENDATIONS of the logged model at `model_uri` (`models:/elmrec-beauty/3`,
    `runs:/<run id>/model`) in the MLflow store of `settings`, ELMRec searching in eval.precision (a model logged
    before the parameter existed ignores it, warned, and ranks in fp32); ValueError naming the URI when it holds no
    model."""
    tracking.configure(settings)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise ValueError(f"no elmrec model at {model_uri}: {str(error).splitlines()[0]}") from error
    params: dict[str, Any] = {"k": k}
    if settings.eval.precision != DEFAULT_PRECISION:
        params["precision"] = settings.eval.precision
    return pl.from_pandas(model.predict(pd.DataFrame({"user": users}), params=params),
                          schema_overrides=recommend.RECOMMENDATIONS)
