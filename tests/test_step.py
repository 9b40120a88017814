"""One training step (elmrec.step) on the tiny dataset of test_train: micro-batches weighted by their target
tokens give the whole batch's gradient, with one graph propagation per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from elmrec.config import Task
from elmrec.paths import WorkPaths
from elmrec.step import train_step
from elmrec.train import TrainData, build_model, epoch_prompts
from tests.conftest import T5_SMALL
from tests.test_train import prepare, synthetic_histories, tiny_settings

pytestmark = [pytest.mark.skipif(not T5_SMALL.is_dir(), reason=f"needs the t5-small tokenizer at {T5_SMALL}"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_train's tiny dataset: raw files, Parquet tables, graph."""
    workdir = tmp_path_factory.mktemp("step") / "work"
    prepare(tiny_settings(workdir), synthetic_histories())
    return workdir


def test_micro_batches_give_the_gradient_of_the_whole_batch(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 2 prompts, weighted by their share of target tokens, add up to the whole batch's gradient (direct
    prompts: the LightGCN propagation runs once per step, not per slice, and the gradients of every slice flow
    back through it)."""
    from transformers.models.t5.modeling_t5 import T5Attention

    import elmrec.model
    from elmrec.device import Device
    from elmrec.pretrained import load_tokenizer
    from elmrec.wholeword import collate

    settings = tiny_settings(workdir)
    data, device = TrainData.load(WorkPaths.from_settings(settings)), Device.resolve("cpu", "fp32")
    model, _ = build_model(settings, data, device)
    for module in model.modules():  # no dropout: both ways must see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, T5Attention):
            module.dropout = 0.0
    prompts = epoch_prompts(Task.DIRECT, data, settings, epoch=1)[:5]
    encoded = model.encode(load_tokenizer(settings.model), prompts, Task.DIRECT)
    batch = collate(encoded, np.arange(5))
    batch["labels"][[0, 3], 1:] = -100  # targets of 1, 2, 2, 1, 2 tokens: the slices' weights matter
    assert (batch["labels"] != -100).sum(1).tolist() == [1, 2, 2, 1, 2]

    propagations = []
    propagate = elmrec.model._propagate
    monkeypatch.setattr(elmrec.model, "_propagate", lambda *args: propagations.append(1) or propagate(*args))

    def gradient(micro_batch_size: int | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that changes nothing
        loss = train_step(model, optimizer, batch, Task.DIRECT, device, micro_batch_size)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole_loss, whole = gradient(None)
    sliced_loss, sliced = gradient(2)  # slices of 2, 2 and 1 prompts
    assert len(propagations) == 2  # one per step, three slices or one
    assert torch.allclose(sliced_loss, whole_loss, rtol=1e-6)
    assert whole.keys() == sliced.keys() and "node_table.weight" in whole
    for name, grad in whole.items():
        assert (sliced[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name  # float32 rounding only


def test_a_sequential_step_propagates_nothing(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequential prompts index the incremental table, so their step neither runs LightGCN nor touches the node
    table; a direct step runs it once."""
    import elmrec.model
    from elmrec.device import Device
    from elmrec.pretrained import load_tokenizer
    from elmrec.wholeword import collate

    settings = tiny_settings(workdir)
    data, device = TrainData.load(WorkPaths.from_settings(settings)), Device.resolve("cpu", "fp32")
    model, _ = build_model(settings, data, device)
    propagations = []
    propagate = elmrec.model._propagate
    monkeypatch.setattr(elmrec.model, "_propagate", lambda *args: propagations.append(1) or propagate(*args))
    tokenizer, optimizer = load_tokenizer(settings.model), torch.optim.SGD(model.parameters(), lr=0.0)
    for task, expected in ((Task.SEQUENTIAL, 0), (Task.DIRECT, 1)):
        encoded = model.encode(tokenizer, epoch_prompts(task, data, settings, epoch=1)[:4], task)
        train_step(model, optimizer, collate(encoded, np.arange(4)), task, device)
        assert len(propagations) == expected, task
        assert (model.node_table.weight.grad is not None) == (task is Task.DIRECT)
        assert model.incremental_table.weight.grad is not None or task is Task.DIRECT
