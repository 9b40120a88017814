"""Recommend to known users with a trained model: the top k items of the whole catalogue, every item of the
user's history excluded, as a table of the dataset's own IDs.

    recommender = from_run(settings)                       # the work dir's finished run of these settings
    recommender.recommend(["A1YJEY40YUW4SE"], k=10)        # user (reviewer ID), rank (1..k), item (ASIN), score

Users are reviewer IDs (str) or the data's user numbers (int, 1..U); an unknown one is a ValueError naming it.

How each recommender ranks (the same decoders as evaluation, on the user's whole history instead of the part
before a held-out item):
- ELMRec: the sequential task's trie-constrained beam search (elmrec.decode, decoder `constrained`) from the bare
  prompt of the user's last `max_history` items. The history's items are cut from the item trie, so every beam
  ends in a new item and k beams give k items; score = the item's summed log-likelihood (<= 0).
- SASRec, LightGCN: every item scored (elmrec.classic_eval.rank_all), the history masked; score = the model's.

A model's files (`ModelFiles`) are a finished run's, or a self-contained copy of them (`ModelFiles.bundle`, what
the MLflow model of elmrec.registry carries), which needs neither the work dir nor a model mirror:

    bundle/
      model.json        recommender, max_history, beams, format
      checkpoint/       the finished training's best model (checkpoint.checkpoint_to_evaluate)
      tokenizer/        ELMRec: the tokenizer of its prompts and item trie (save_pretrained)
      adjacency.npz     Â, when the run has a graph (ELMRec's propagation, LightGCN)
      data/             histories, user_map, item_map .parquet: who and what the model knows
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, get_args

import numpy as np
import polars as pl
import scipy.sparse as sp
from safetensors.torch import load_model

from elmrec.checkpoint import checkpoint_to_evaluate
from elmrec.classic_batches import eval_inputs
from elmrec.classic_checkpoint import MODEL_FILE, SHAPE_FILE
from elmrec.classic_eval import TaskInputs, rank_all
from elmrec.config import EvalPrecision, EvalSettings, LightGCNSettings, ModelSettings, SASRecSettings, Settings, Task
from elmrec.data import schemas
from elmrec.decode import rank_sequential
from elmrec.device import Device
from elmrec.evaluate import decode_inputs
from elmrec.lightgcn import LightGCN
from elmrec.metrics import INVALID
from elmrec.model import ELMRec
from elmrec.paths import DataPaths, WorkPaths
from elmrec.pretrained import load_tokenizer, resolve_model_source
from elmrec.prompts import BARE_SEQUENTIAL, SEQUENTIAL_TEMPLATES, render
from elmrec.sasrec import SASRec
from elmrec.trie import ItemTrie
from elmrec.wholeword import Prompt

RECOMMENDATIONS = pl.Schema({"user": pl.String, "rank": pl.Int16, "item": pl.String, "score": pl.Float64})
BUNDLE_FORMAT = 1
DECODE_BATCH = 32  # users per ELMRec beam search (eval.batch_size's default)
User = str | int  # a reviewer ID, or the data's user number


# ---------------------------------------------------------------------------------------------- who and what


@dataclass(frozen=True)
class Catalogue:
    """Who and what a model knows: the users' reviewer IDs and histories, the items' ASINs."""

    reviewer_ids: list[str]  # user u's reviewer ID at index u - 1
    asins: list[str]  # item i's ASIN at index i - 1
    histories: dict[int, list[int]]  # user -> the whole chronological history

    @classmethod
    def load(cls, data: DataPaths) -> Catalogue:
        users = schemas.read(data.user_map, schemas.USER_MAP).sort("user")
        items = schemas.read(data.item_map, schemas.ITEM_MAP).sort("item")
        for name, ids in (("user", users["user"]), ("item", items["item"])):
            if ids.to_list() != list(range(1, len(ids) + 1)):
                raise ValueError(f"{data.root}: {name} IDs are not 1..{len(ids)}")
        histories = schemas.read(data.histories, schemas.HISTORIES)
        return cls(users["reviewer_id"].to_list(), items["asin"].to_list(),
                   dict(zip(histories["user"].to_list(), histories["items"].to_list())))

    def user_numbers(self, users: Sequence[User]) -> list[int]:
        """The data's user number of each reviewer ID (str) or number (int); ValueError naming an unknown one."""
        index = {reviewer: u for u, reviewer in enumerate(self.reviewer_ids, start=1)}
        numbers = []
        for user in users:
            number = int(user) if isinstance(user, (int, np.integer)) and not isinstance(user, bool) \
                else index.get(user) if isinstance(user, str) else None
            if number is None or not 1 <= number <= len(self.reviewer_ids) or number not in self.histories:
                raise ValueError(f"unknown user {user!r}: the model knows {len(self.reviewer_ids)} users (their "
                                 f"reviewer IDs, e.g. {self.reviewer_ids[0]!r}, or user numbers 1.."
                                 f"{len(self.reviewer_ids)})")
            numbers.append(number)
        return numbers


# ---------------------------------------------------------------------------------------------- rankers


class Ranker(Protocol):
    """Top k items per user, none of the user's `exclude` items; (items, scores) per user, best first."""

    def top(self, users: list[int], exclude: list[list[int]], k: int) -> tuple[list[list[int]], list[list[float]]]:
        ...


@dataclass
class ELMRecRanker:
    """The sequential task's trie-constrained beam search over all items (elmrec.decode)."""

    model: ELMRec
    tokenizer: Any
    trie: ItemTrie
    max_history: int  # history items in the prompt (train.max_history)
    beams: int  # beams of the search (eval.sequential_beams), widened to k when k is larger
    precision: EvalPrecision = "fp32"  # of the search (eval.precision)

    def top(self, users: list[int], exclude: list[list[int]], k: int) -> tuple[list[list[int]], list[list[float]]]:
        template = SEQUENTIAL_TEMPLATES[BARE_SEQUENTIAL]
        prompts = [Prompt(u, Task.SEQUENTIAL, render(template, u, h[-self.max_history:]), "")
                   for u, h in zip(users, exclude)]
        inputs = decode_inputs(self.model, self.tokenizer, prompts, Task.SEQUENTIAL, histories=exclude)
        search = EvalSettings(sequential_decoders=["constrained"], sequential_beams=max(self.beams, k), top_n=k,
                              batch_size=DECODE_BATCH, precision=self.precision)
        result = rank_sequential(self.model, inputs, self.trie, search, progress=False)["constrained"]
        return _rows(result.items, result.scores)


@dataclass
class ClassicRanker:
    """Every item scored by SASRec or LightGCN, the history masked (elmrec.classic_eval.rank_all)."""

    model: SASRec | LightGCN
    device: Device

    def top(self, users: list[int], exclude: list[list[int]], k: int) -> tuple[list[list[int]], list[list[float]]]:
        width = self.model.max_len if isinstance(self.model, SASRec) else 1
        targets = np.ones(len(users), dtype=np.int64)  # rank_all's cross-entropy needs a target; it is ignored
        inputs = TaskInputs(Task.SEQUENTIAL, eval_inputs(users, exclude, width), targets, None, exclude)
        result, _ = rank_all(self.model, inputs, k, self.device)
        return _rows(result.items, result.scores)


def _rows(items: np.ndarray, scores: np.ndarray) -> tuple[list[list[int]], list[list[float]]]:
    """Per user, the filled slots of a DecodeResult's (U, K) arrays (empty and invalid ones dropped)."""
    keep = items != INVALID
    return ([row[m].tolist() for row, m in zip(items, keep)], [row[m].tolist() for row, m in zip(scores, keep)])


# ---------------------------------------------------------------------------------------------- the recommender


@dataclass
class Recommender:
    """A trained model's ranker and what it knows: recommendations in the dataset's own IDs."""

    ranker: Ranker
    catalogue: Catalogue

    def in_precision(self, precision: EvalPrecision) -> Recommender:
        """This recommender with ELMRec's search in `precision` (eval.precision); SASRec and LightGCN rank in fp32
        either way. ValueError naming the choices for any other value."""
        if precision not in get_args(EvalPrecision):
            raise ValueError(f"precision must be one of {', '.join(get_args(EvalPrecision))}, got {precision!r}")
        return replace(self, ranker=replace(self.ranker, precision=precision)) \
            if isinstance(self.ranker, ELMRecRanker) else self

    def recommend(self, users: Sequence[User], k: int = 10) -> pl.DataFrame:
        """RECOMMENDATIONS rows: per user (in the order given, each once), its top k items outside its whole
        history, rank 1..k, score non-increasing. Fewer than k rows only when fewer items are left to recommend."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        numbers = list(dict.fromkeys(self.catalogue.user_numbers(users)))
        histories = [self.catalogue.histories[u] for u in numbers]
        items, scores = self.ranker.top(numbers, histories, k) if numbers else ([], [])
        ids, asins = self.catalogue.reviewer_ids, self.catalogue.asins
        return pl.DataFrame({
            "user": [ids[u - 1] for u, row in zip(numbers, items) for _ in row],
            "rank": [rank for row in items for rank in range(1, len(row) + 1)],
            "item": [asins[i - 1] for row in items for i in row],
            "score": [s for row in scores for s in row],
        }, schema=RECOMMENDATIONS)  # fmt: skip


def format_table(recommendations: pl.DataFrame) -> str:
    """One block per user: its reviewer ID, then `rank  item  score` lines, aligned."""
    blocks = []
    for (user,), rows in recommendations.group_by("user", maintain_order=True):
        width = max(4, *(len(a) for a in rows["item"]))
        lines = [f"{r:>4}  {a:<{width}}  {s:.4f}" for r, a, s in rows.select("rank", "item", "score").iter_rows()]
        blocks.append("\n".join([f"user {user}", f"{'rank':>4}  {'item':<{width}}  score", *lines]))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------- files -> recommender


@dataclass(frozen=True)
class ModelFiles:
    """Everything a trained recommender needs to recommend, as files: a finished run's, or a bundle's."""

    recommender: str  # elmrec | sasrec | lightgcn
    checkpoint: Path
    data: DataPaths  # histories, user_map, item_map
    adjacency: Path | None  # Â, when the run has one
    tokenizer: str  # ELMRec: a folder (or hub name) holding its tokenizer; "" for the others
    max_history: int  # ELMRec: history items in a prompt
    beams: int  # ELMRec: beams of the constrained search

    @classmethod
    def of_run(cls, settings: Settings, paths: WorkPaths | None = None, allow_unfinished: bool = False) -> ModelFiles:
        """The files of the finished run of `settings` (an unfinished one only with `allow_unfinished`)."""
        paths = paths or WorkPaths.from_settings(settings)
        checkpoint = checkpoint_to_evaluate(paths.run(settings), allow_unfinished)
        elmrec = settings.recommender == "elmrec"
        return cls(settings.recommender, checkpoint, paths.data,
                   paths.graph.adjacency if paths.graph.adjacency.is_file() else None,
                   resolve_model_source(settings.model)[0] if elmrec else "", settings.train.max_history,
                   settings.eval.sequential_beams)

    @classmethod
    def read(cls, bundle: Path) -> ModelFiles:
        """The files of a bundle written by `bundle`."""
        bundle = Path(bundle)
        meta = json.loads((bundle / "model.json").read_text())
        if meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{bundle}: bundle format {meta.get('format')} != {BUNDLE_FORMAT}")
        adjacency = bundle / "adjacency.npz"
        return cls(meta["recommender"], bundle / "checkpoint", DataPaths(bundle / "data"),
                   adjacency if adjacency.is_file() else None,
                   str(bundle / "tokenizer") if meta["recommender"] == "elmrec" else "", int(meta["max_history"]),
                   int(meta["beams"]))

    def bundle(self, target: Path) -> ModelFiles:
        """Copy these files into the empty or new folder `target`, self-contained (the tokenizer saved there
        too); returns the bundle's files."""
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.checkpoint, target / "checkpoint")
        (target / "data").mkdir()
        for path in (self.data.histories, self.data.user_map, self.data.item_map):
            shutil.copy2(path, target / "data" / path.name)
        if self.adjacency is not None:
            shutil.copy2(self.adjacency, target / "adjacency.npz")
        if self.recommender == "elmrec":
            load_tokenizer(ModelSettings(model_name=self.tokenizer)).save_pretrained(target / "tokenizer")
        meta = {"format": BUNDLE_FORMAT, "recommender": self.recommender, "max_history": self.max_history,
                "beams": self.beams}
        (target / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
        return ModelFiles.read(target)


def load(files: ModelFiles, device: str = "auto") -> Recommender:
    """The recommender of `files`, in eval mode on `device` (auto: CUDA when available), ranking in fp32
    (`Recommender.in_precision` for bf16)."""
    chosen = Device.resolve(device, "fp32")
    adjacency = sp.csr_matrix(sp.load_npz(files.adjacency)) if files.adjacency is not None else None
    catalogue = Catalogue.load(files.data)
    if files.recommender == "elmrec":
        model = ELMRec.load(files.checkpoint, adjacency=adjacency, map_location=chosen.device)
        if Task.SEQUENTIAL not in model.tasks:
            raise ValueError(f"{files.checkpoint}: the model was trained for {[t.value for t in model.tasks]}, "
                             "not the sequential task that ranks the whole catalogue")
        tokenizer = load_tokenizer(ModelSettings(model_name=files.tokenizer))
        ranker: Ranker = ELMRecRanker(model, tokenizer, ItemTrie.from_tokenizer(tokenizer, model.n_items),
                                      files.max_history, files.beams)
    else:
        model = _classic(files, adjacency).to(chosen.device).eval()
        ranker = ClassicRanker(model, chosen)
    if model.n_items != len(catalogue.asins):
        raise ValueError(f"{files.checkpoint} ranks {model.n_items} items, its data names {len(catalogue.asins)}")
    return Recommender(ranker, catalogue)


def from_run(settings: Settings, paths: WorkPaths | None = None, allow_unfinished: bool = False) -> Recommender:
    """The recommender of the finished run of `settings` in its work dir, on train.device, ranking in
    eval.precision."""
    files = ModelFiles.of_run(settings, paths, allow_unfinished)
    return load(files, settings.train.device).in_precision(settings.eval.precision)


def _classic(files: ModelFiles, adjacency: sp.csr_matrix | None) -> SASRec | LightGCN:
    """SASRec or LightGCN rebuilt from checkpoint/shape.json and its weights."""
    shape = json.loads((files.checkpoint / SHAPE_FILE).read_text())
    if shape["recommender"] == "sasrec":
        model: SASRec | LightGCN = SASRec(shape["n_items"], SASRecSettings.model_validate(shape["settings"]))
    elif adjacency is None:
        raise FileNotFoundError(f"{files.checkpoint}: LightGCN needs the graph's adjacency.npz")
    else:
        model = LightGCN(shape["n_users"], shape["n_items"], adjacency,
                         LightGCNSettings.model_validate(shape["settings"]))
    load_model(model, str(files.checkpoint / MODEL_FILE), strict=True)
    return model

