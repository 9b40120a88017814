"""ELMRec model: exact checks on a tiny T5 (d_model 32, one layer) built from the real t5-small config."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from transformers import T5Config, T5ForConditionalGeneration

from elmrec.config import ModelSettings, T5Size, Task
from elmrec.model import ELMRec
from elmrec.pretrained import load_t5
from elmrec.propagation import propagate
from tests.conftest import T5_SMALL, TINY_T5

T5_FOLDER = T5_SMALL
TINY = T5Size(**TINY_T5)
N_USERS, N_ITEMS = 2, 3  # nodes: 0 pad, users 1-2, items 3-5
EDGES = [(1, 3), (1, 4), (2, 4), (2, 5)]  # user node, item node
BOTH = (Task.SEQUENTIAL, Task.DIRECT)

pytestmark = pytest.mark.skipif(not T5_FOLDER.is_dir(), reason="needs the t5-small config at /work/shared/t5-small")


def normalised_adjacency() -> np.ndarray:
    """Dense Â = D^-1/2 A D^-1/2 of the tiny bipartite graph (node 0 isolated)."""
    a = np.zeros((6, 6), dtype=np.float64)
    for u, i in EDGES:
        a[u, i] = a[i, u] = 1.0
    degree = a.sum(1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


@pytest.fixture(scope="module")
def tiny_config() -> T5Config:
    t5, pretrained = load_t5(ModelSettings(model_name=str(T5_FOLDER), reduced=TINY))
    assert not pretrained
    return t5.config


def make(tiny_config: T5Config, tasks=BOTH, seed: int = 0, **overrides) -> ELMRec:
    """A fresh tiny ELMRec in eval mode; overrides go to ModelSettings."""
    torch.manual_seed(seed)
    values = {"model_name": str(T5_FOLDER), "reduced": TINY, "alpha": 2.0, "sigma": 0.5, "n_layers": 2,
              "prompt_num": 3}
    settings = ModelSettings(**{**values, **overrides})
    model = ELMRec(T5ForConditionalGeneration(tiny_config), settings, N_USERS, N_ITEMS,
                   sp.csr_matrix(normalised_adjacency()), tasks)
    return model.eval()


def batch(ww: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, ww_ids, attention_mask, labels) with the given ww ids; last position padded."""
    ww_ids = torch.tensor(ww)
    input_ids = torch.arange(5, 5 + ww_ids.numel()).reshape(ww_ids.shape)
    mask = torch.ones_like(input_ids)
    input_ids[:, -1], ww_ids[:, -1], mask[:, -1] = 0, 0, 0
    labels = torch.tensor([[7, 8, 1]] * ww_ids.shape[0])
    return input_ids, ww_ids, mask, labels


def test_alpha_zero_without_prompts_is_plain_t5(tiny_config):
    model = make(tiny_config, alpha=0.0, prompt_num=0)
    input_ids, ww_ids, mask, labels = batch([[1, 1, 2, 0], [4, 4, 0, 0]])
    for task in BOTH:
        ours = model(input_ids, ww_ids, mask, task, labels=labels).logits
        plain = model.t5(input_ids=input_ids, attention_mask=mask, labels=labels).logits
        assert torch.equal(ours, plain)


def test_ww_id_zero_adds_nothing_and_k_adds_alpha_row_k(tiny_config):
    model = make(tiny_config, prompt_num=0)
    input_ids, ww_ids, mask, _ = batch([[0, 1, 1, 4, 0]])
    embeds, out_mask = model.encoder_inputs(input_ids, ww_ids, mask, Task.DIRECT)
    shared = model.t5.get_input_embeddings()(input_ids)
    table = model.node_embeddings()
    assert torch.equal(out_mask, mask)
    assert torch.equal(embeds[0, 0], shared[0, 0]) and torch.equal(embeds[0, -1], shared[0, -1])
    for pos, k in [(1, 1), (2, 1), (3, 4)]:
        assert torch.equal(embeds[0, pos], shared[0, pos] + 2.0 * table[k])
    seq_embeds, _ = model.encoder_inputs(input_ids, ww_ids, mask, Task.SEQUENTIAL)
    incremental = model.incremental_table.weight
    assert torch.equal(seq_embeds[0, 0], shared[0, 0])
    assert torch.equal(seq_embeds[0, 3], shared[0, 3] + 2.0 * incremental[4])


def test_propagation_matches_dense_lightgcn(tiny_config):
    model = make(tiny_config, n_layers=3)
    e = model.node_table.weight.detach().double().numpy()
    a_hat = normalised_adjacency()
    layers = [e]
    for _ in range(3):
        layers.append(a_hat @ layers[-1])
    expected = np.mean(layers, axis=0)
    expected[0] = 0.0
    with torch.no_grad():
        got = model.node_embeddings().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert model.adjacency.layout is torch.sparse_csr and "adjacency" not in model.state_dict()


def test_gradients_reach_unmentioned_neighbours(tiny_config):
    model = make(tiny_config).train()
    input_ids, _, mask, labels = batch([[1, 1, 0, 0]])  # only user 1 (node 1) is mentioned
    ww_ids = torch.tensor([[1, 1, 0, 0]])
    model(input_ids, ww_ids, mask, Task.DIRECT, labels=labels).loss.backward()
    grad_norm = model.node_table.weight.grad.norm(dim=1)
    assert (grad_norm[[1, 3, 4, 2]] > 0).all()  # itself, its items (1 hop), user 2 (2 hops)
    assert grad_norm[5] == 0 and grad_norm[0] == 0  # item 5 is 3 hops away with L=2; padding never


def test_eval_cache_is_dropped_by_a_training_step(tiny_config):
    model = make(tiny_config).eval()
    with torch.no_grad():
        first = model.node_embeddings()
        assert model.node_embeddings() is first  # eval + no grad: propagated once
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # fused: no trace on the tensor
    model.node_embeddings().sum().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model.node_embeddings()
        expected = propagate(model.adjacency, model.node_table.weight, model.settings.n_layers)
    assert not torch.equal(after, first) and torch.allclose(after[1:], expected[1:])
    assert model.node_embeddings().requires_grad  # grads on: recomputed, not the cache


def test_soft_prompts_prepend_per_task(tiny_config):
    model = make(tiny_config, prompt_num=3)
    input_ids, ww_ids, mask, _ = batch([[1, 2, 0], [3, 0, 0]])
    seq_embeds, seq_mask = model.encoder_inputs(input_ids, ww_ids, mask, Task.SEQUENTIAL)
    dir_embeds, _ = model.encoder_inputs(input_ids, ww_ids, mask, Task.DIRECT)
    assert seq_embeds.shape == (2, 3 + 3, 32) and seq_mask.shape == (2, 3 + 3)
    assert torch.equal(seq_mask[:, :3], torch.ones(2, 3, dtype=mask.dtype)) and torch.equal(seq_mask[:, 3:], mask)
    assert torch.equal(seq_embeds[0, :3], model.prompts["sequential"])
    assert torch.equal(seq_embeds[1, :3], seq_embeds[0, :3])
    assert torch.equal(dir_embeds[0, :3], model.prompts["direct"])
    assert not torch.equal(seq_embeds[:, :3], dir_embeds[:, :3])
    with pytest.raises(ValueError, match="not among"):
        model.encoder_inputs(input_ids, ww_ids, mask, Task.EXPLANATION)


def test_variant_pod_is_t5_with_prompts(tiny_config):
    model = make(tiny_config, alpha=0.0)
    assert model.alpha == 0.0 and model.node_table is None and model.incremental_table is None
    input_ids, ww_ids, mask, _ = batch([[1, 2, 0]])
    embeds, _ = model.encoder_inputs(input_ids, ww_ids, mask, Task.DIRECT)
    assert torch.equal(embeds[0, 3:], model.t5.get_input_embeddings()(input_ids)[0])
    ELMRec(T5ForConditionalGeneration(tiny_config), model.settings, N_USERS, N_ITEMS, None, BOTH)  # no graph needed


def test_variant_no_graph_uses_raw_node_table(tiny_config):
    settings = ModelSettings(model_name=str(T5_FOLDER), variant="no_graph", sigma=0.5)
    model = ELMRec(T5ForConditionalGeneration(tiny_config), settings, N_USERS, N_ITEMS, None, BOTH)
    assert model.adjacency is None and not model.propagates
    assert torch.equal(model.node_embeddings(), model.node_table.weight)  # row 0 already zero


def test_variant_no_incremental_uses_graph_for_sequential(tiny_config):
    model = make(tiny_config, variant="no_incremental", prompt_num=0)
    assert model.ww_mode(Task.SEQUENTIAL) == "node" and model.incremental_table is None
    input_ids, ww_ids, mask, _ = batch([[4, 5, 0]])
    embeds, _ = model.encoder_inputs(input_ids, ww_ids, mask, Task.SEQUENTIAL)
    shared = model.t5.get_input_embeddings()(input_ids)
    assert torch.equal(embeds[0, 1], shared[0, 1] + 2.0 * model.node_embeddings()[5])


def test_variant_elmrec_modes_and_missing_graph(tiny_config):
    model = make(tiny_config)
    assert model.ww_mode(Task.SEQUENTIAL) == "order" and model.ww_mode(Task.DIRECT) == "node"
    assert model.ww_mode(Task.EXPLANATION) == "node"
    assert make(tiny_config, tasks=[Task.SEQUENTIAL]).node_table is None
    with pytest.raises(ValueError, match="adjacency"):
        ELMRec(T5ForConditionalGeneration(tiny_config), model.settings, N_USERS, N_ITEMS, None, BOTH)
    with pytest.raises(ValueError, match="ww ids must lie"):
        model.encoder_inputs(*batch([[7, 0]])[:3], Task.DIRECT)  # node 7 does not exist


def test_save_load_round_trip(tiny_config, tmp_path):
    model = make(tiny_config)
    with torch.no_grad():
        model.prompts["direct"].add_(0.25)  # differs from a fresh init
    target = tmp_path / "checkpoint"
    model.save(target)
    model.save(target)  # overwriting an existing checkpoint works
    files = [p for p in target.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json"}, files
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint.lock", "checkpoint"]  # no temp folders left
    loaded = ELMRec.load(target, adjacency=sp.csr_matrix(normalised_adjacency()))
    input_ids, ww_ids, mask, labels = batch([[1, 1, 3, 0]])
    for task in BOTH:
        expected = model(input_ids, ww_ids, mask, task, labels=labels).logits
        assert torch.equal(loaded(input_ids, ww_ids, mask, task, labels=labels).logits, expected)
    assert loaded.settings == model.settings and loaded.tasks == model.tasks


def test_generate_from_inputs_embeds(tiny_config):
    model = make(tiny_config)
    input_ids, ww_ids, mask, _ = batch([[1, 1, 0], [2, 0, 0]])
    out = model.generate(input_ids, ww_ids, mask, Task.DIRECT, num_beams=3, num_return_sequences=2, max_new_tokens=4)
    assert out.dtype == torch.long and out.shape[0] == 4 and 2 <= out.shape[1] <= 5
    assert (out[:, 0] == model.t5.config.decoder_start_token_id).all()


def test_incremental_table_starts_from_unit_normal_and_node_table_from_sigma(tiny_config):
    """The authors' incremental table is nn.Embedding's N(0, 1), whatever sigma; only the node table is N(0, sigma).
    511 x 32 and 500 x 32 draws: a sample std is within 1.5% of the true one (5 standard errors)."""
    torch.manual_seed(0)
    settings = ModelSettings(model_name=str(T5_FOLDER), reduced=TINY, sigma=6.0, variant="no_graph")
    model = ELMRec(T5ForConditionalGeneration(tiny_config), settings, 200, 300, None, BOTH)
    incremental, node = model.incremental_table.weight.detach(), model.node_table.weight.detach()
    assert incremental.shape == (512, 32) and node.shape == (501, 32)
    assert not incremental[0].any() and not node[0].any()  # padding rows add nothing
    assert abs(float(incremental[1:].std()) - 1.0) < 0.015 and abs(float(incremental[1:].mean())) < 0.02
    assert abs(float(node[1:].std()) - 6.0) < 6.0 * 0.015
