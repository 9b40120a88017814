"""Evaluate stage: rank items for every evaluation user, score the rankings, write metrics and predictions.

One harness serves the model and the non-learned baselines: each produces a `DecodeResult` per task, and the
same code turns it into metrics and a predictions table.

- Split (EvalSettings.split): `valid` uses the second-last item and the stored validation candidates; `test` the
  last item and the stored test candidates. `max_users` keeps the first N users (by user ID).
- Direct: rank the user's stored candidates with each of `eval.direct_decoders` (`score`, the paper's `beam`),
  from one tokenization of the prompts and one encoder pass per batch (decode.rank_direct).
- Sequential: rank the whole catalogue given the last `train.max_history` items with each of
  `eval.sequential_decoders` (`constrained`, the paper's `rerank`); never recommend an item the user interacted
  with before the target (decode.rank_sequential).
- Baselines rank by scores: their one decoder is `score` (metrics.SCORE_DECODER).

Outputs, written together (atomically) into `RunPaths.evaluation(settings)` or `WorkPaths.baselines(settings)`:

    metrics.json        {task: {decoder: {hr@1, hr@5, hr@10, ndcg@5, ndcg@10, invalid_rate, coverage@10,
                                          n_users, n_invalid}}}     (baselines: {baseline: {task: {"score": ...}}})
    predictions_<task>_<decoder>.parquet      (baselines: predictions_<baseline>_<task>_score.parquet)
                        user int32, rank int16 (1-based), item int32 (-1 = invalid), score float64
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from elmrec import baselines
from elmrec.checkpoint import checkpoint_to_evaluate
from elmrec.config import Settings, Task
from elmrec.data import schemas
from elmrec.decode import DecodeInputs, rank_direct, rank_sequential
from elmrec.device import Device
from elmrec.graph import load_adjacency
from elmrec.memory import releases_for
from elmrec.metrics import SCORE_DECODER, DecodeResult
from elmrec.model import ELMRec
from elmrec.paths import METRICS_FILE, DataPaths, WorkPaths, atomic_dir
from elmrec.pretrained import load_tokenizer
from elmrec.prompts import direct_eval, sequential_eval
from elmrec.trie import ItemTrie
from elmrec.wholeword import MAX_PROMPT_TOKENS, Prompt, collate

logger = logging.getLogger(__name__)

PREDICTIONS = pl.Schema({"user": pl.Int32, "rank": pl.Int16, "item": pl.Int32, "score": pl.Float64})
RANKED_TASKS = (Task.SEQUENTIAL, Task.DIRECT)  # explanation generation is not a ranking task
COVERAGE_K = 10  # coverage@10, beside the paper's HR/NDCG cut-offs


# ---------------------------------------------------------------------------------------------- evaluation data


@dataclass(frozen=True)
class EvalData:
    """One split's evaluation inputs from the preprocess stage, restricted to the first `max_users` users, or to
    the given `users`."""

    split: str
    n_users: int
    n_items: int
    histories: pl.DataFrame  # user, items: the whole chronological history, sorted by user
    candidates: pl.DataFrame  # user, split, target, candidates: this split's rows, sorted by user
    train_counts: np.ndarray  # (n_items + 1,) training interactions per item, over all users

    @classmethod
    def load(cls, data: DataPaths, split: str, max_users: int | None = None,
             users: np.ndarray | None = None) -> EvalData:
        stats = json.loads(data.stats.read_text())
        n_items = int(stats["n_items"])
        histories = schemas.read(data.histories, schemas.HISTORIES).sort("user")
        train = schemas.read(data.interactions, schemas.INTERACTIONS).filter(pl.col("split") == "train")
        counts = np.bincount(train["item"].to_numpy(), minlength=n_items + 1).astype(np.int64)
        if max_users is not None:
            histories = histories.head(max_users)
        if users is not None:
            histories = histories.filter(pl.col("user").is_in(pl.Series(users).implode()))
        candidates = (schemas.read(data.candidates, schemas.CANDIDATES)
                      .filter((pl.col("split") == split) & pl.col("user").is_in(histories["user"].implode()))
                      .sort("user"))
        return cls(split, int(stats["n_users"]), n_items, histories, candidates, counts)

    def prompts(self, task: Task, max_history: int) -> list[Prompt]:
        """Bare evaluation prompts; their `target` is the held-out item of this split."""
        if task is Task.DIRECT:
            return direct_eval(self.candidates, self.split)
        return sequential_eval(self.histories, self.split, max_history)

    def exclusions(self, users: list[int]) -> list[list[int]]:
        """For each user, every item before this split's target: never to be recommended again."""
        drop = 2 if self.split == "valid" else 1
        items = dict(zip(self.histories["user"].to_list(), self.histories["items"].to_list()))
        return [items[u][: len(items[u]) - drop] for u in users]

    def candidate_lists(self) -> list[list[int]]:
        return self.candidates["candidates"].to_list()


def targets_of(prompts: list[Prompt]) -> np.ndarray:
    return np.array([int(p.target) for p in prompts], dtype=np.int64)


# ---------------------------------------------------------------------------------------------- scoring, writing


def score(result: DecodeResult, targets: np.ndarray, n_items: int) -> dict[str, Any]:
    """HR@1/5/10, NDCG@5/10, invalid rate, coverage@10 of one ranking, plus its size."""
    values: dict[str, Any] = result.metrics(targets, n_items, k=COVERAGE_K)
    values.update(n_users=len(result.users), n_invalid=int(result.n_invalid))
    return values


def predictions_frame(result: DecodeResult) -> pl.DataFrame:
    """One row per (user, slot): user, 1-based rank, item (-1 = invalid or empty slot), score (NaN if none)."""
    n_users, width = result.items.shape
    if width > np.iinfo(np.int16).max:
        raise ValueError(f"{width} ranked slots per user do not fit the int16 rank column")
    return pl.DataFrame({
        "user": np.repeat(result.users, width).astype(np.int32),
        "rank": np.tile(np.arange(1, width + 1), n_users).astype(np.int16),
        "item": result.items.reshape(-1).astype(np.int32),
        "score": result.scores.reshape(-1).astype(np.float64),
    }, schema=PREDICTIONS)  # fmt: skip


def write_outputs(folder: Path, metrics: dict[str, Any], predictions: dict[str, DecodeResult]) -> Path:
    """metrics.json (sorted keys: byte-identical for identical metrics) + predictions_<name>.parquet, atomically."""
    with atomic_dir(folder) as tmp:
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        for name, result in predictions.items():
            predictions_frame(result).write_parquet(tmp / f"predictions_{name}.parquet")
    return folder / METRICS_FILE


# ---------------------------------------------------------------------------------------------- the model


def load_model(settings: Settings, paths: WorkPaths, checkpoint_dir: Path | None = None,
               allow_unfinished: bool = False) -> ELMRec:
    """The trained model (eval mode, on the configured device), with Â when the graph stage has written it.

    By default the run's finished checkpoint (checkpoint.checkpoint_to_evaluate: an unfinished training is refused
    unless `allow_unfinished`, which takes its best model so far)."""
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else checkpoint_to_evaluate(paths.run(settings),
                                                                                    allow_unfinished)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint} is missing; run the train stage first (elmrec task train)")
    adjacency = load_adjacency(paths.graph) if paths.graph.adjacency.is_file() else None
    return ELMRec.load(checkpoint, adjacency=adjacency, map_location=Device.resolve(settings.train.device).device)


def decode_inputs(model: ELMRec, tokenizer: Any, prompts: list[Prompt], task: Task,
                  candidates: list[list[int]] | None = None, histories: list[list[int]] | None = None) -> DecodeInputs:
    """Tokenize prompts with the whole-word ids the model expects for `task`, padded into one DecodeInputs."""
    encoded = model.encode(tokenizer, [p.text for p in prompts], task)  # bare texts: no targets to tokenize
    if len(encoded) and int(encoded.lengths.max()) >= MAX_PROMPT_TOKENS:
        logger.warning("%s: some prompts reach %d tokens and were truncated", task.value, MAX_PROMPT_TOKENS)
    batch = collate(encoded, np.arange(len(encoded)), pad_id=tokenizer.pad_token_id)
    return DecodeInputs(batch["input_ids"], batch["attention_mask"], batch["ww_ids"], [p.user for p in prompts],
                        candidates=candidates, histories=histories)


def rank_task(model: ELMRec, tokenizer: Any, trie: ItemTrie, data: EvalData, task: Task,
              settings: Settings, progress: bool = True, release_every: int = 0
              ) -> tuple[dict[str, DecodeResult], np.ndarray]:
    """({decoder: ranking}, targets) of one task over the evaluation users: the prompts are tokenized once and
    every configured decoder of the task ranks them (one encoder pass per batch; the reused heap's free pages
    given back before the first batch, every `release_every` and after the last: elmrec.memory.releasing)."""
    prompts = data.prompts(task, settings.train.max_history)
    if task is Task.DIRECT:
        inputs = decode_inputs(model, tokenizer, prompts, task, candidates=data.candidate_lists())
        results = rank_direct(model, inputs, trie, settings.eval, progress=progress, release_every=release_every)
    else:
        exclusions = data.exclusions([p.user for p in prompts])
        inputs = decode_inputs(model, tokenizer, prompts, task, histories=exclusions)
        results = rank_sequential(model, inputs, trie, settings.eval, progress=progress,
                                  release_every=release_every)
    return results, targets_of(prompts)


def evaluate_model(settings: Settings, paths: WorkPaths, checkpoint_dir: Path | None = None,
                   progress: bool = True, allow_unfinished: bool = False,
                   on_task: Callable[[str, dict[str, Any], float], None] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate the trained model on every ranking task it was trained for; writes metrics.json + predictions.

    Returns {task: {decoder: {metric: value, ..., "n_users", "invalid_rate", "coverage@10"}}}. `on_task(task,
    {decoder: metrics}, share_done)` is called after each task (progress reporting).
    """
    torch.manual_seed(settings.seed)  # decoding is deterministic; seeded anyway so no entry point is not
    split = settings.eval.split
    data = EvalData.load(paths.data, split, settings.eval.max_users)
    release_every = releases_for(settings.train.malloc, Device.resolve(settings.train.device).device.type)
    model = load_model(settings, paths, checkpoint_dir, allow_unfinished)
    if (model.n_users, model.n_items) != (data.n_users, data.n_items):
        raise ValueError(f"checkpoint has {model.n_users} users / {model.n_items} items, the data "
                         f"{data.n_users} / {data.n_items}: it was trained on other data")
    tokenizer = load_tokenizer(settings.model)
    trie = ItemTrie.from_tokenizer(tokenizer, data.n_items)
    metrics: dict[str, dict[str, Any]] = {}
    predictions: dict[str, DecodeResult] = {}
    tasks = [t for t in RANKED_TASKS if t in model.tasks]
    for done, task in enumerate(tasks, start=1):
        start = time.perf_counter()
        results, targets = rank_task(model, tokenizer, trie, data, task, settings, progress, release_every)
        metrics[task.value] = {d: score(result, targets, data.n_items) for d, result in results.items()}
        predictions.update({f"{task.value}_{d}": result for d, result in results.items()})
        seconds, n_users = time.perf_counter() - start, len(targets)
        summary = "; ".join(f"{d} hr@10 {m['hr@10']:.4f} ndcg@10 {m['ndcg@10']:.4f}"
                            for d, m in metrics[task.value].items())
        logger.info("%s/%s: %d users in %.1f s (%.2f users/s, all decoders, %s); %s", task.value, split, n_users,
                    seconds, n_users / max(seconds, 1e-9), settings.eval.precision, summary)
        if on_task is not None:
            on_task(task.value, metrics[task.value], done / len(tasks))
    if not metrics:
        raise ValueError(f"the model's tasks {[t.value for t in model.tasks]} include no ranking task")
    write_outputs(paths.run(settings).evaluation(settings), metrics, predictions)
    return metrics


# ---------------------------------------------------------------------------------------------- baselines


def evaluate_baselines(settings: Settings, paths: WorkPaths) -> dict[str, dict[str, dict[str, Any]]]:
    """Popularity and random rankings for both tasks, same users and protocol as the model; no model needed.

    Popularity counts training interactions only. Writes WorkPaths.baselines(settings)/metrics.json and
    predictions_<baseline>_<task>_score.parquet; returns {baseline: {task: {"score": metrics}}}.
    """
    split, top_n = settings.eval.split, settings.eval.top_n
    data = EvalData.load(paths.data, split, settings.eval.max_users)
    seq_prompts = data.prompts(Task.SEQUENTIAL, settings.train.max_history)
    seq_users = [p.user for p in seq_prompts]
    exclusions = data.exclusions(seq_users)
    direct_users = data.candidates["user"].to_list()
    cands = data.candidate_lists()
    rankings: dict[str, dict[Task, DecodeResult]] = {
        "popularity": {
            Task.SEQUENTIAL: baselines.popularity_sequential(exclusions, data.train_counts, top_n, seq_users),
            Task.DIRECT: baselines.popularity_direct(cands, data.train_counts, direct_users),
        },
        "random": {
            Task.SEQUENTIAL: baselines.random_sequential(exclusions, data.n_items, top_n, settings.seed, seq_users),
            Task.DIRECT: baselines.random_direct(cands, settings.seed, direct_users),
        },
        "id_order": {  # visible history = the prompt's last max_history items; exclusions = all before the target
            Task.SEQUENTIAL: baselines.id_order_sequential([e[-settings.train.max_history:] for e in exclusions],
                                                           exclusions, data.n_items, top_n, seq_users),
            Task.DIRECT: baselines.id_order_direct(cands, baselines.training_items(data.histories, direct_users),
                                                   direct_users),
        },
    }
    targets = {Task.SEQUENTIAL: targets_of(seq_prompts), Task.DIRECT: data.candidates["target"].to_numpy()}
    metrics = {name: {task.value: {SCORE_DECODER: score(result, targets[task], data.n_items)}
                      for task, result in by_task.items()} for name, by_task in rankings.items()}
    predictions = {f"{name}_{task.value}_{SCORE_DECODER}": result for name, by_task in rankings.items()
                   for task, result in by_task.items()}
    write_outputs(paths.baselines(settings), metrics, predictions)
    for name, by_task in metrics.items():
        logger.info("baseline %s (%s): %s", name, split,
                    ", ".join(f"{t} hr@5 {m[SCORE_DECODER]['hr@5']:.4f}" for t, m in by_task.items()))
    return metrics
