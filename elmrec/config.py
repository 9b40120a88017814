"""Typed settings for every stage, and the named presets.

One `Settings` object describes a whole pipeline run. It is a pydantic model, so a bad value fails before any
work starts with a message naming the field (`data.id_scheme: Input should be 'p5' or 'shuffled'`). Presets
are plain dictionaries of overrides merged onto the defaults; `settings_for(preset, overrides)` builds one.
"""

from __future__ import annotations

import copy
import os
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Task(str, Enum):
    """The recommendation tasks a model is trained and evaluated on."""

    SEQUENTIAL = "sequential"
    DIRECT = "direct"
    EXPLANATION = "explanation"


class Stage(str, Enum):
    """Pipeline stages, in the order they run."""

    DOWNLOAD = "download"
    PREPROCESS = "preprocess"
    GRAPH = "graph"
    TRAIN = "train"
    EVALUATE = "evaluate"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class DataSettings(_Strict):
    dataset: str = "beauty"  # beauty | sports | toys for p5; any name for local; lower-case category for amazon2014
    source: Literal["p5", "amazon2014", "local"] = "p5"  # where the raw files come from
    mirror: str | None = None  # folder or URL replacing the public base location (env ELMREC_MIRROR)
    path: str | None = None  # the folder for source=local
    category: str | None = None  # amazon2014 category (e.g. Beauty); None derives it from `dataset`
    kcore: int = Field(5, ge=1)  # amazon2014: keep users and items with at least k interactions
    id_scheme: Literal["p5", "shuffled"] = "p5"  # shuffled removes the consecutive-item-ID order leak
    graph_edges: Literal["train", "all"] = "train"  # "all" leaks validation/test edges into the graph
    n_negatives: int = Field(99, ge=1)  # negatives per evaluation user (the paper: 99)
    max_users: int | None = Field(None, ge=3)  # keep the first N users only (mini/demo subsets); None = all

    @field_validator("dataset")
    @classmethod
    def _lower_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"not a usable dataset name: {value!r}")
        return value.lower()


class T5Size(_Strict):
    """A reduced T5 shape (same tokenizer), for demos that must finish in minutes on a CPU."""

    d_model: int = 64
    d_ff: int = 128
    d_kv: int = 16
    num_heads: int = 4
    num_layers: int = 2
    num_decoder_layers: int = 2


class ModelSettings(_Strict):
    model_name: str = "t5-small"  # hub name or local folder with config.json + spiece.model
    model_mirror: str | None = None  # folder holding <model_name>/, tried before the hub (env ELMREC_MODEL_MIRROR)
    reduced: T5Size | None = None  # set: build a smaller T5 from the config, never load weights
    variant: Literal["elmrec", "pod", "no_graph", "no_incremental"] = "elmrec"  # ablations, one setting away
    alpha: float = 6.0  # scale of the whole-word embedding added to token embeddings (Beauty sequential)
    sigma: float = 6.0  # std of the N(0, sigma) init of the graph node table
    n_layers: int = Field(4, ge=0)  # LightGCN layers L
    prompt_num: int = Field(3, ge=0)  # soft prompt vectors per task (POD)
    incremental_size: int = 512  # rows of the incremental (order-of-appearance) table


class TrainSettings(_Strict):
    tasks: list[Task] = [Task.SEQUENTIAL, Task.DIRECT]  # batches alternate between these
    lr: float = 1e-3  # AdamW, as the paper
    batch_size: int = Field(64, ge=1)  # as the paper
    micro_batch_size: int | None = Field(None, ge=1)  # forward/backward in slices of this many prompts: the
    #                                                   same update in a slice's memory (None: whole batch)
    max_epochs: int = Field(20, ge=1)  # upper bound; early stopping usually ends sooner
    patience: int = Field(5, ge=1)  # epochs without a better mean validation loss before stopping
    max_history: int = Field(20, ge=1)  # history items in a sequential prompt
    valid_users: int | None = Field(2000, ge=1)  # users for the validation loss; None = all
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (bf16 on CPU
    #                                                      is ~1.5-2x faster on recent x86 but less exact)


class EvalSettings(_Strict):
    split: Literal["valid", "test"] = "test"
    direct_mode: Literal["score", "beam"] = "score"  # score ranks all 100 candidates exactly
    sequential_mode: Literal["constrained", "rerank"] = "constrained"
    direct_beams: int = 20  # paper
    sequential_beams: int = 30  # paper
    top_n: int = 10
    rerank_n: int = 15  # N extra beams returned before history items are dropped (paper's N)
    batch_size: int = 32
    max_users: int | None = None  # evaluate the first N users only; None = all


class Settings(_Strict):
    seed: int = 2024  # seeds negatives, samplers, initialisation
    workdir: Path = Path("work")  # every artifact lives below it (env ELMREC_WORKDIR)
    tracking_uri: str | None = None  # MLflow store; None = sqlite:///<workdir>/mlflow.db
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    def resolved_mirror(self) -> str | None:
        return self.data.mirror or os.environ.get("ELMREC_MIRROR") or None

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"


# Paper Table 9 (corrected): per dataset and task, alpha / sigma / N / L.
PAPER_HPARAMS: dict[tuple[str, Task], dict[str, float]] = {
    ("sports", Task.DIRECT): {"alpha": 5, "sigma": 5, "rerank_n": 10, "n_layers": 4},
    ("beauty", Task.DIRECT): {"alpha": 9, "sigma": 6, "rerank_n": 15, "n_layers": 4},
    ("toys", Task.DIRECT): {"alpha": 11, "sigma": 5, "rerank_n": 10, "n_layers": 4},
    ("sports", Task.SEQUENTIAL): {"alpha": 1, "sigma": 5, "rerank_n": 10, "n_layers": 4},
    ("beauty", Task.SEQUENTIAL): {"alpha": 6, "sigma": 6, "rerank_n": 15, "n_layers": 4},
    ("toys", Task.SEQUENTIAL): {"alpha": 9, "sigma": 5, "rerank_n": 10, "n_layers": 4},
}


def paper_overrides(dataset: str, tuned_for: Task) -> dict[str, Any]:
    """Overrides for the paper's hyper-parameters of one dataset, tuned for one task."""
    hp = PAPER_HPARAMS.get((dataset, tuned_for))
    if hp is None:
        known = sorted({name for name, _ in PAPER_HPARAMS})
        raise ValueError(f"no paper hyper-parameters for dataset {dataset!r}; known: {known}")
    return {
        "model": {"alpha": hp["alpha"], "sigma": hp["sigma"], "n_layers": int(hp["n_layers"])},
        "eval": {"rerank_n": int(hp["rerank_n"])},
    }


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's setting (Beauty, sequential-tuned); `full` deployments combine it with paper_overrides.
    "paper": {},
    # The whole pipeline in minutes on 2 CPU cores: Beauty subset, reduced T5, few epochs.
    "demo": {
        "data": {"max_users": 2000},
        "model": {"reduced": {}},
        "train": {"batch_size": 32, "max_epochs": 3, "patience": 2, "valid_users": 200},
        "eval": {"max_users": 200, "direct_beams": 5, "sequential_beams": 5, "rerank_n": 5},
    },
    # A larger subset for a first comparison of variants, under 30 minutes on 2 CPU cores (ELMRec + POD).
    "mini": {
        "data": {"max_users": 3000},
        "model": {"reduced": {}},
        "train": {"batch_size": 32, "max_epochs": 4, "patience": 2, "valid_users": 300},
        "eval": {"max_users": 1000},
    },
}


Preset = Literal["paper", "mini", "demo"]  # the keys of PRESETS, as a type Prefect can validate

# Named model/decoding variants, each a set of overrides on the run's settings (for ablations and `full`).
# Variants that differ only in decoding share one trained checkpoint (its folder hashes model + train only).
VARIANTS: dict[str, dict[str, Any]] = {
    "elmrec": {},
    "pod": {"model": {"variant": "pod"}},  # alpha = 0: T5 + soft prompts, no whole-word embeddings
    "no_graph": {"model": {"variant": "no_graph"}},  # whole-word table without LightGCN propagation
    "no_incremental": {"model": {"variant": "no_incremental"}},  # sequential prompts use graph ww ids
    "paper_decoding": {"eval": {"direct_mode": "beam", "sequential_mode": "rerank"}},  # the paper's decoders
    "direct_tuned": {},  # paper Table 9 hyper-parameters tuned for direct recommendation (see variant_settings)
    "sequential_tuned": {},  # ... and for sequential recommendation
}
Variant = Literal["elmrec", "pod", "no_graph", "no_incremental", "paper_decoding", "direct_tuned", "sequential_tuned"]


def variant_settings(base: Settings, name: str) -> Settings:
    """`base` with the overrides of variant `name` (the *_tuned variants take the paper's per-dataset values)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
    overrides = VARIANTS[name]
    if name.endswith("_tuned"):
        overrides = paper_overrides(base.data.dataset, Task(name.removesuffix("_tuned")))
    return Settings.model_validate(deep_merge(base.model_dump(mode="json"), overrides))


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `overrides` merged into `base`, nested dictionaries merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def settings_for(preset: str = "paper", overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from a preset name plus nested overrides; ELMREC_WORKDIR sets the default work dir."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    values: dict[str, Any] = {}
    if os.environ.get("ELMREC_WORKDIR"):
        values["workdir"] = os.environ["ELMREC_WORKDIR"]
    values = deep_merge(values, PRESETS[preset])
    values = deep_merge(values, overrides or {})
    return Settings.model_validate(values)
