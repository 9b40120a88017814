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
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from elmrec.data.sources import check_dataset


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
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True,
                              allow_inf_nan=False)  # nan/inf fail here, not after an epoch


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
    negatives: Literal["seeded", "authors"] = "seeded"  # test negatives: drawn once here, or the P5 source's
    #   negative.txt (the authors' fixed lists; validation candidates stay seeded: the authors re-drew them)
    max_users: int | None = Field(None, ge=3)  # keep the first N users only (mini/demo subsets); None = all

    @field_validator("dataset")
    @classmethod
    def _lower_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"not a usable dataset name: {value!r}")
        return value.lower()

    @model_validator(mode="after")
    def _known_dataset(self) -> DataSettings:
        try:
            check_dataset(self.source, self.dataset, self.category)
        except ValueError as error:
            raise ValueError(f"data.dataset: {error}") from None
        return self

    @model_validator(mode="after")
    def _authors_negatives_need_the_whole_p5_dataset(self) -> DataSettings:
        if self.negatives == "authors" and (self.source == "amazon2014" or self.max_users is not None
                                            or self.n_negatives != 99):
            raise ValueError("data.negatives: 'authors' reads the P5 layout's negative.txt (99 per user, every user): "
                             "it needs source p5 or local, max_users None and n_negatives 99")
        return self


class T5Size(_Strict):
    """A reduced T5 shape (same tokenizer), for demos that must finish in minutes on a CPU."""

    d_model: int = Field(64, ge=1)
    d_ff: int = Field(128, ge=1)
    d_kv: int = Field(16, ge=1)
    num_heads: int = Field(4, ge=1)
    num_layers: int = Field(2, ge=1)
    num_decoder_layers: int = Field(2, ge=1)


class ModelSettings(_Strict):
    model_name: str = "t5-small"  # hub name or local folder with config.json + spiece.model
    model_mirror: str | None = None  # folder holding <model_name>/, tried before the hub (env ELMREC_MODEL_MIRROR)
    reduced: T5Size | None = None  # set: build a smaller T5 from the config, never load weights
    allow_random_init: bool = False  # full-shape T5 without pretrained weights: refuse (a random t5-small is not
    #                                  the paper's model) unless set, for benchmarks and tests of the shape
    variant: Literal["elmrec", "no_graph", "no_incremental"] = "elmrec"  # ablations, one setting away (POD: alpha 0)
    alpha: float = Field(6.0, ge=0)  # scale of the whole-word embedding added to token embeddings (Beauty sequential)
    sigma: float = Field(6.0, gt=0)  # std of the N(0, sigma) init of the graph node table
    n_layers: int = Field(4, ge=0)  # LightGCN layers L
    prompt_num: int = Field(3, ge=0)  # soft prompt vectors per task (POD)
    incremental_size: int = Field(512, ge=2)  # rows of the incremental (order-of-appearance) table


HeapPolicy = Literal["reuse", "system"]  # train.malloc: elmrec.memory


class TrainSettings(_Strict):
    tasks: list[Task] = [Task.SEQUENTIAL, Task.DIRECT]  # batches alternate between these
    lr: float = Field(1e-3, gt=0, le=1)  # AdamW, as the paper
    batch_size: int = Field(64, ge=1)  # as the paper
    micro_batch_size: int | None = Field(None, ge=1)  # forward/backward in slices of this many prompts: the
    #                                                   same update in a slice's memory (None: whole batch)
    max_epochs: int = Field(20, ge=1)  # upper bound; early stopping usually ends sooner
    patience: int = Field(5, ge=1)  # epochs without a better mean validation loss before stopping
    early_stopping: Literal["consecutive", "cumulative"] = "consecutive"  # patience counts the epochs since the
    #   best one (consecutive) or every non-improving epoch, never reset (cumulative: the authors' code)
    passes_per_epoch: int = Field(1, ge=1)  # passes over the users per task in one epoch (fresh prompts each)
    max_history: int = Field(20, ge=1)  # history items in a sequential prompt
    valid_users: int | None = Field(2000, ge=1)  # users for the validation loss; None = all
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where it is faster (elmrec.device)
    #   (CUDA; CPUs with AVX512-BF16, AMX-BF16 or Arm BF16: elmrec.device), else fp32; README, Speed: the evidence
    attention: Literal["sdpa", "eager"] = "sdpa"  # T5's attention kernel: PyTorch's fused SDPA, or the eager one
    compile: bool = False  # torch.compile T5 (dynamic shapes); pays off on GPUs only once the compile is amortised
    malloc: HeapPolicy = "reuse"  # on a CPU, keep the memory a step frees for the next
    #   step, in training and evaluation (elmrec.memory: faster; the process holds its peak until it exits), or
    #   glibc's default
    nproc: int = Field(1, ge=1)  # training processes; > 1: DDP under torchrun, one GPU each (gloo on CPU), every
    #                              process a 1/nproc share of each batch (same update); ELMRec only
    devices: list[int] | None = None  # CUDA device indices (as torch numbers the visible ones) of the nproc
    #                                   processes; None: the first nproc

    @model_validator(mode="after")
    def _processes_fit(self) -> TrainSettings:
        if self.devices is not None:
            if self.device == "cpu":
                raise ValueError("train.devices: CUDA device indices need train.device 'cuda' or 'auto', not 'cpu'")
            if len(self.devices) != self.nproc or len(set(self.devices)) != self.nproc or min(self.devices) < 0:
                raise ValueError(f"train.devices: {self.devices} must be train.nproc ({self.nproc}) distinct "
                                 f"indices >= 0")
        if self.batch_size < self.nproc:
            raise ValueError(f"train.nproc: {self.nproc} processes share each batch of train.batch_size "
                             f"({self.batch_size}) prompts: at least one prompt each")
        return self


DirectDecoder = Literal["score", "beam"]  # score: all 100 candidates, exactly; beam: the paper's free beam search
SequentialDecoder = Literal["constrained", "rerank"]  # constrained: trie beam search; rerank: the paper's
EvalPrecision = Literal["fp32", "bf16"]  # eval.precision (no auto: a run's numbers do not depend on the CPU)
DECODER_ORDER = (*get_args(DirectDecoder), *get_args(SequentialDecoder))  # canonical: score, beam, constrained, rerank


def _decoder_list(value: list[str], kinds: tuple[str, ...]) -> list[str]:
    """Non-empty, no duplicates; put in the canonical order of `kinds` (one evaluation folder per set)."""
    if not value:
        raise ValueError("name at least one decoder")
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate decoders in {value}")
    return sorted(value, key=kinds.index)


class EvalSettings(_Strict):
    split: Literal["valid", "test"] = "test"
    direct_decoders: list[DirectDecoder] = ["score"]  # evaluated side by side in one stage; the paper preset
    sequential_decoders: list[SequentialDecoder] = ["constrained"]  # adds the paper's decoders (beam, rerank)
    direct_beams: int = Field(20, ge=1)  # paper
    sequential_beams: int = Field(30, ge=1)  # paper
    top_n: int = Field(10, ge=1)  # length of each ranked list (HR/NDCG@k for k <= top_n)
    rerank_n: int = Field(15, ge=0)  # N extra beams returned before history items are dropped (paper's N)
    batch_size: int = Field(32, ge=1)  # users per decoding batch
    max_users: int | None = Field(None, ge=1)  # evaluate the first N users only; None = all
    precision: EvalPrecision = "fp32"  # fp32: the same rankings from a checkpoint on every machine;
    #   bf16: autocast, faster where bf16 is (README, Speed), near-tied candidates may swap places

    @field_validator("direct_decoders")
    @classmethod
    def _direct(cls, value: list[str]) -> list[str]:
        return _decoder_list(value, get_args(DirectDecoder))

    @field_validator("sequential_decoders")
    @classmethod
    def _sequential(cls, value: list[str]) -> list[str]:
        return _decoder_list(value, get_args(SequentialDecoder))


class SASRecSettings(_Strict):
    """SASRec (Kang & McAuley 2018), a classic baseline (elmrec.sasrec); runs on train.device."""

    dim: int = Field(64, ge=1)  # hidden size (the paper: 50; 64 is the usual modern choice)
    n_blocks: int = Field(2, ge=1)  # self-attention blocks, as the paper
    n_heads: int = Field(1, ge=1)  # one head, as the paper (more did not help there)
    dropout: float = Field(0.5, ge=0, lt=1)  # the paper's rate for the sparse Amazon data
    max_len: int = Field(50, ge=2)  # last training items attended to, as the paper for Amazon
    loss: Literal["ce", "bce"] = "ce"  # ce: softmax over all items, stronger than bce with one negative
    #                                    (Klenitskiy & Vasilev 2023); bce: the paper's loss
    lr: float = Field(2e-3, gt=0, le=1)  # Adam; twice the paper's: Beauty peaks at epoch ~13, not ~30
    weight_decay: float = Field(0.0, ge=0)  # AdamW decay; dropout regularises enough at this size
    batch_size: int = Field(128, ge=1)  # as the paper
    max_epochs: int = Field(50, ge=1)  # upper bound; early stopping ends Beauty after ~16 (~13 s each, 2 cores)
    patience: int = Field(3, ge=1)  # evaluations without a better validation NDCG@10; 3 keeps Beauty in 10 min
    eval_every: int = Field(1, ge=1)  # epochs between validation evaluations
    valid_users: int | None = Field(5000, ge=1)  # a seeded sample of N users validates (None = all): a fifth of the
    #                                             cost of all of Beauty's; the criterion's standard error ~.002
    select_task: Task = Task.SEQUENTIAL  # whose validation NDCG@10 picks the best epoch: SASRec's own task

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecSettings:
        if self.dim % self.n_heads:
            raise ValueError(f"sasrec.dim ({self.dim}) must be a multiple of sasrec.n_heads ({self.n_heads})")
        return self


class LightGCNSettings(_Strict):
    """LightGCN (He et al. 2020) with BPR, a classic baseline (elmrec.lightgcn); runs on train.device."""

    dim: int = Field(64, ge=1)  # as the paper
    n_layers: int = Field(3, ge=0)  # the paper's best on most data; 4 adds little and smooths more
    lr: float = Field(1e-2, gt=0, le=1)  # Adam; 10x the paper's, with 4x its batch: best epoch ~7 on Beauty
    reg: float = Field(1e-4, ge=0)  # L2 on the batch's layer-0 embeddings, as the paper
    batch_size: int = Field(8192, ge=1)  # BPR triples per step; every step propagates over the whole graph,
    #                                      so larger batches make an epoch cheaper (Beauty: 19 steps)
    max_epochs: int = Field(100, ge=1)  # upper bound; early stopping ends Beauty after ~12
    patience: int = Field(5, ge=1)  # evaluations without a better validation NDCG@10
    eval_every: int = Field(1, ge=1)  # epochs between validation evaluations
    valid_users: int | None = Field(5000, ge=1)  # a seeded sample of N users validates: direct NDCG@10 ~.26 has a
    #                                             standard error ~.004 there, at a quarter of all users' cost
    select_task: Task = Task.DIRECT  # whose validation NDCG@10 picks the best epoch: the task LightGCN serves


class Settings(_Strict):
    seed: int = Field(2024, ge=0)  # seeds negatives, samplers, initialisation
    workdir: Path = Path("work")  # every artifact lives below it (env ELMREC_WORKDIR)
    tracking_uri: str | None = None  # MLflow store; None = sqlite:///<workdir>/mlflow.db
    register_models: bool = True  # log each trained model as an MLflow model, registered as elmrec-<dataset>
    recommender: Literal["elmrec", "sasrec", "lightgcn"] = "elmrec"  # the model a run trains and evaluates
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    sasrec: SASRecSettings = SASRecSettings()  # used when recommender = "sasrec"
    lightgcn: LightGCNSettings = LightGCNSettings()  # used when recommender = "lightgcn"

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
    "paper": {
        "train": {
            "max_epochs": 100,  # the authors' --epochs
            "early_stopping": "cumulative",  # their endure_count: 5 non-improving epochs in total, never reset
            # Their rotation gives each task floor((floor(E/64) + 2 floor(U/64)) / 3) batches of 64 per epoch (E:
            # explanation training records, ~0.8 x interactions): 1059 on Beauty = 3.0 passes over its 22,363
            # users (Sports 2.9, Toys 3.0).
            "passes_per_epoch": 3,
        },
        "eval": {"direct_decoders": ["score", "beam"], "sequential_decoders": ["constrained", "rerank"]},
    },
    # The whole pipeline in minutes on 2 CPU cores: Beauty subset, reduced T5, few epochs.
    "demo": {
        "data": {"max_users": 2000},
        "model": {"reduced": {}},
        # fp32: the reduced T5's products are too small to gain from bf16: on a 2-core AVX512-BF16 CPU its steps
        # took 6% longer in bf16 (train_throughput.py --preset mini --cpu-bf16, 2026-11-28; README, Speed)
        "train": {"batch_size": 32, "max_epochs": 3, "patience": 2, "valid_users": 200, "precision": "fp32"},
        "eval": {"max_users": 200, "direct_beams": 10, "sequential_beams": 10, "rerank_n": 5},  # beams >= top_n
    },
    # A larger subset for a first comparison of variants, under 30 minutes on 2 CPU cores (ELMRec + POD).
    "mini": {
        "data": {"max_users": 3000},
        "model": {"reduced": {}},
        "train": {"batch_size": 32, "max_epochs": 4, "patience": 2, "valid_users": 300, "precision": "fp32"},  # as demo
        "eval": {"max_users": 1000},
    },
}


Preset = Literal["paper", "mini", "demo"]  # the keys of PRESETS, as a type Prefect can validate

# Named model/decoding variants, each a set of overrides on the run's settings (for ablations and `full`).
# Variants that differ only in decoding share one trained checkpoint (its folder hashes model + train only).
VARIANTS: dict[str, dict[str, Any]] = {
    "elmrec": {},
    "pod": {"model": {"alpha": 0.0}},  # POD: T5 + soft prompts, no whole-word embeddings
    "no_graph": {"model": {"variant": "no_graph"}},  # whole-word table without LightGCN propagation
    "no_incremental": {"model": {"variant": "no_incremental"}},  # sequential prompts use graph ww ids
    "paper_decoding": {"eval": {"direct_decoders": ["score", "beam"],  # the paper's decoders beside the exact
                                "sequential_decoders": ["constrained", "rerank"]}},
    "shuffled_ids": {"data": {"id_scheme": "shuffled"}},  # how much survives without the item-ID order leak
    "leaky_graph": {"data": {"graph_edges": "all"}},  # how much held-out edges in the graph add (a leak)
    "sasrec": {"recommender": "sasrec"},  # classic baseline: self-attentive sequential recommendation
    "lightgcn": {"recommender": "lightgcn"},  # classic baseline: LightGCN trained with BPR on the same graph
    "direct_tuned": {},  # paper Table 9 hyper-parameters tuned for direct recommendation (see variant_settings)
    "sequential_tuned": {},  # ... and for sequential recommendation
}
Variant = Literal[
    "elmrec", "pod", "no_graph", "no_incremental", "paper_decoding", "shuffled_ids", "leaky_graph", "sasrec",
    "lightgcn", "direct_tuned", "sequential_tuned",
]  # the keys of VARIANTS, as a type Prefect can validate (a test keeps the two equal)


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
