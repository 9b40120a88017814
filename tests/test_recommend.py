"""Recommending with a trained model (elmrec.recommend) on the tiny fixture: 4 users over 10 items, so a history
item would often top a ranking if it were not excluded. The ELMRec model is the real train stage's (one epoch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from elmrec.app.cli import main
from elmrec.classic_batches import eval_inputs
from elmrec.classic_eval import to_device
from elmrec.config import Settings, Task
from elmrec.evaluate import decode_inputs
from elmrec.likelihood import encode, log_likelihood
from elmrec.recommend import RECOMMENDATIONS, ModelFiles, Recommender, format_table, from_run, load
from elmrec.wholeword import Prompt
from tests.conftest import RUN_HISTORIES, trained_run

pytestmark = pytest.mark.usefixtures("one_thread")

ALL_ITEMS = {f"A{i}" for i in range(1, 11)}
HISTORY = {f"U{user}": {f"A{i}" for i in items} for user, items in RUN_HISTORIES.items()}


@pytest.fixture(scope="module")
def recommender(tiny_run: Settings) -> Recommender:
    return from_run(tiny_run)


def per_user(table: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {user: rows for (user,), rows in table.group_by("user", maintain_order=True)}


def check_rankings(table: pl.DataFrame, users: list[str], k: int) -> None:
    """k rows per user (fewer only when fewer items are new to it), ranks 1.., scores non-increasing, no item
    twice, never a history item."""
    assert table.schema == RECOMMENDATIONS
    assert list(per_user(table)) == users
    for user, rows in per_user(table).items():
        expected = min(k, len(ALL_ITEMS - HISTORY[user]))
        assert rows["rank"].to_list() == list(range(1, expected + 1))
        assert len(set(rows["item"])) == expected and not set(rows["item"]) & HISTORY[user]
        scores = rows["score"].to_numpy()
        assert np.all(np.diff(scores) <= 0) and np.isfinite(scores).all()


def test_elmrec_recommends_k_new_items_per_user_best_first(recommender: Recommender) -> None:
    table = recommender.recommend(["U2", "U1", "U4"], k=3)
    check_rankings(table, ["U2", "U1", "U4"], 3)
    assert (table["score"] < 0).all()  # log-probabilities of the item sequences


def test_every_item_outside_the_history_and_no_other_when_k_exceeds_them(recommender: Recommender) -> None:
    table = recommender.recommend(["U1", "U2", "U3", "U4"], k=10)
    check_rankings(table, ["U1", "U2", "U3", "U4"], 10)
    for user, rows in per_user(table).items():
        assert set(rows["item"]) == ALL_ITEMS - HISTORY[user]  # U3: the 4 items it has not bought, nothing else


def test_scores_are_the_exact_log_likelihoods_and_the_ranking_exact_when_beams_cover_the_items(
        recommender: Recommender) -> None:
    """With as many beams as items, the constrained search ranks every new item by its sequence log-likelihood."""
    ranker, user = recommender.ranker, 1
    history = RUN_HISTORIES[user]
    table = recommender.recommend([user], k=10)  # 10 beams >= the 10 items
    prompt = Prompt(user, Task.SEQUENTIAL, f"user_{user} " + " ".join(f"item_{i}" for i in history), "")
    inputs = decode_inputs(ranker.model, ranker.tokenizer, [prompt], Task.SEQUENTIAL)
    new = [i for i in range(1, 11) if i not in history]
    with torch.inference_mode():
        states = encode(ranker.model, inputs.input_ids, inputs.ww_ids, inputs.attention_mask, Task.SEQUENTIAL)
        exact = log_likelihood(ranker.model, states, torch.zeros(len(new), dtype=torch.long),
                               ranker.trie.labels(torch.tensor(new))).double().numpy()
    order = np.argsort(-exact, kind="stable")
    assert table["item"].to_list() == [f"A{new[j]}" for j in order]
    np.testing.assert_allclose(table["score"].to_numpy(), exact[order], rtol=1e-5)


def test_users_as_reviewer_ids_or_numbers_each_once(recommender: Recommender) -> None:
    by_id = recommender.recommend(["U3", "U1"], k=2)
    assert recommender.recommend([3, np.int64(1), "U3"], k=2).equals(by_id)


def test_an_unknown_user_is_a_clear_error(recommender: Recommender) -> None:
    with pytest.raises(ValueError) as error:
        recommender.recommend(["U1", "nobody"])
    assert str(error.value) == ("unknown user 'nobody': the model knows 4 users (their reviewer IDs, e.g. 'U1', or "
                                "user numbers 1..4)")
    with pytest.raises(ValueError, match="unknown user 5: the model knows 4 users"):
        recommender.recommend([5])
    with pytest.raises(ValueError, match="k must be at least 1"):
        recommender.recommend(["U1"], k=0)


def test_a_bundle_recommends_alone_what_the_run_recommends(tiny_run: Settings, recommender: Recommender,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ModelFiles.of_run(tiny_run).bundle(tmp_path / "bundle")
    inside = [files.checkpoint, files.data.root, files.adjacency, Path(files.tokenizer)]
    assert all(path.is_relative_to(tmp_path / "bundle") and path.exists() for path in inside)
    monkeypatch.delenv("ELMREC_MODEL_MIRROR", raising=False)  # the bundle's own tokenizer, no mirror
    users = ["U1", "U2", "U3", "U4"]
    assert load(files, "cpu").recommend(users, k=4).equals(recommender.recommend(users, k=4))


def test_elmrec_searches_in_eval_precision(tiny_run: Settings, recommender: Recommender) -> None:
    """fp32 by default; with eval.precision=bf16 every pass of the search runs under bf16 autocast, and the same
    users get as many new items, scored within bf16's rounding."""
    seen: list[torch.dtype] = []
    users = ["U1", "U2", "U3", "U4"]
    for precision in ("fp32", "bf16"):
        chosen = from_run(tiny_run.model_copy(update={"eval": tiny_run.eval.model_copy(
            update={"precision": precision})}))
        assert chosen.ranker.precision == precision
        assert recommender.in_precision(precision).ranker.precision == precision  # a copy: the original stays fp32
        chosen.ranker.model.t5.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        table = chosen.recommend(users, k=4)
        check_rankings(table, users, 4)
        assert set(seen) == {torch.float32 if precision == "fp32" else torch.bfloat16}
        seen.clear()
        if precision == "fp32":
            assert table.equals(recommender.recommend(users, k=4))
        else:  # each rank's score within bf16's rounding of fp32's (a swap of near-tied items moves neither)
            fp32 = recommender.recommend(users, k=4)
            np.testing.assert_allclose(table["score"].to_numpy(), fp32["score"].to_numpy(), rtol=0.05, atol=0.1)
    assert recommender.ranker.precision == "fp32"
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, got 'auto'$"):
        recommender.in_precision("auto")


@pytest.mark.parametrize("kind", ["sasrec", "lightgcn"])
def test_classic_models_rank_every_item_with_the_history_masked(kind: str,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = trained_run(tmp_path_factory.mktemp(kind), kind)
    recommender = from_run(settings)
    users = ["U3", "U1", "U2", "U4"]
    table = recommender.recommend(users, k=5)
    check_rankings(table, users, 5)
    ranker = recommender.ranker  # the model's own scores of every item, history masked, give the same top 5
    numbers = [3, 1, 2, 4]
    width = ranker.model.max_len if kind == "sasrec" else 1
    batch = to_device(eval_inputs(numbers, [RUN_HISTORIES[u] for u in numbers], width), ranker.device)
    with torch.no_grad():
        scores = ranker.model.score_all(batch).numpy()  # (4, 11)
    for row, (user, rows) in zip(scores, per_user(table).items()):
        row[RUN_HISTORIES[int(user[1:])]] = -np.inf
        top = [i for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])][:5]  # U3: 4 new items only
        assert rows["item"].to_list() == [f"A{i}" for i in top]
        np.testing.assert_allclose(rows["score"].to_numpy(), row[top], rtol=1e-6)
    assert recommender.in_precision("bf16") is recommender  # they rank in fp32 either way


def test_the_table_prints_one_block_per_user() -> None:
    table = pl.DataFrame({"user": ["U1", "U1", "U2"], "rank": [1, 2, 1], "item": ["B0001", "A7", "A3"],
                          "score": [-1.5, -2.25, -0.125]}, schema=RECOMMENDATIONS)
    assert format_table(table) == ("user U1\nrank  item   score\n   1  B0001  -1.5000\n   2  A7     -2.2500\n\n"
                                   "user U2\nrank  item  score\n   1  A3    -0.1250")


def logged_config(settings: Settings, path: Path) -> Path:
    """The run's config.yaml as MLflow logs it (tracking.RunLog.settings): `--config` gives the same settings."""
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    return path


def test_the_command_prints_the_table_of_the_work_dirs_model(tiny_run: Settings, recommender: Recommender,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(logged_config(tiny_run, tmp_path / "config.yaml"))
    assert main(["recommend", "--config", config, "--user", "U1", "--user", "U3", "--k", "3"]) == 0
    assert capsys.readouterr().out == format_table(recommender.recommend(["U1", "U3"], k=3)) + "\n"
    assert main(["recommend", "--config", config, "--user", "U1", "--user", "nobody"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.endswith(
        "error: unknown user 'nobody': the model knows 4 users (their reviewer IDs, e.g. 'U1', or user numbers "
        "1..4)\n")
    assert main(["recommend", "--config", config, "--variant", "pod", "--user", "U1"]) == 2  # never trained
    assert last_line(capsys.readouterr().err).endswith("is missing; run `elmrec task train` first (same options)")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
