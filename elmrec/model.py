"""The ELMRec model: a stock T5 whose encoder input gets whole-word ID embeddings and per-task soft prompts.

    encoder input = [ prompts[task] (P, d) | shared(input_ids) + alpha * ww_table[ww_ids] (L, d) ]

Every token of one ID mention shares a whole-word (ww) id; id 0 (text, padding) adds exactly nothing.
- direct / explanation: ww id = graph node index; ww_table = a node table after L LightGCN layers on the
  user-item graph, recomputed in every training forward pass so gradients reach the table.
- sequential: ww id = order of appearance (1, 2, 3, ...); ww_table = a separate incremental table.
T5 itself is untouched: `forward`/`generate` hand `inputs_embeds` to the stock T5 methods.

POD (the `pod` variant) is alpha = 0: no ww tables (plain T5 + soft prompts). Variants (ModelSettings.variant):
`no_graph` = node table without propagation; `no_incremental` = sequential prompts use node ids into the graph table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.modeling_outputs import Seq2SeqLMOutput

from elmrec.config import ModelSettings, Task
from elmrec.paths import atomic_dir
from elmrec.propagation import propagate, to_torch_sparse
from elmrec.wholeword import Encoded, Prompt, WholeWordMode, encode

T5_DIR = "t5"  # save_pretrained folder inside a checkpoint
TABLES_FILE = "elmrec_tables.safetensors"  # node / incremental tables and soft prompts
META_FILE = "elmrec.json"  # settings and sizes needed to rebuild the module
FORMAT_VERSION = 1
INCREMENTAL_STD = 1.0  # init std of the incremental table: nn.Embedding's N(0, 1), as the authors' code


# ---------------------------------------------------------------- graph propagation


def _propagate(adjacency: torch.Tensor, table: torch.Tensor, n_layers: int) -> torch.Tensor:
    """`propagation.propagate` (LightGCN layer mean) in the table's dtype even under autocast: sparse matmul lacks
    reduced-precision kernels on some devices.  # (N, d)"""
    with torch.autocast(device_type=table.device.type, enabled=False):
        return propagate(adjacency, table, n_layers)


def _zero_row0(table: torch.Tensor) -> torch.Tensor:
    """The table with row 0 replaced by zeros, so ww id 0 adds exactly nothing (and row 0 gets no gradient)."""
    return torch.cat([table.new_zeros(1, table.shape[1]), table[1:]])


def _normal_embedding(rows: int, dim: int, std: float) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=0)
    with torch.no_grad():
        table.weight.normal_(0.0, std)
        table.weight[0].zero_()
    return table


# ---------------------------------------------------------------- the model


class ELMRec(nn.Module):
    """T5 + whole-word (graph-aware / incremental) embeddings + soft prompts. Nodes: 0 padding, users 1..U,
    items U+1..U+I; `adjacency` is the normalised Â of shape (U+I+1, U+I+1), needed when the graph propagates."""

    def __init__(
        self,
        t5: T5ForConditionalGeneration,
        settings: ModelSettings,
        n_users: int,
        n_items: int,
        adjacency: sp.spmatrix | sp.sparray | None,
        tasks: Sequence[Task],
    ) -> None:
        super().__init__()
        self.t5 = t5
        self.settings = settings
        self.n_users, self.n_items = n_users, n_items
        self.n_nodes = n_users + n_items + 1
        self.tasks = tuple(dict.fromkeys(Task(t) for t in tasks))
        if not self.tasks:
            raise ValueError("ELMRec needs at least one task")
        self.alpha = float(settings.alpha)
        d_model = t5.config.d_model

        # The node table starts from N(0, sigma) (the paper); the incremental table from N(0, 1), nn.Embedding's
        # default in the authors' code: Table 9's sequential alpha is calibrated against that scale.
        modes = {self.ww_mode(t) for t in self.tasks} if self.alpha != 0 else set()  # alpha 0: POD
        self.node_table = (
            _normal_embedding(self.n_nodes, d_model, settings.sigma) if WholeWordMode.NODE in modes else None
        )
        self.incremental_table = (
            _normal_embedding(settings.incremental_size, d_model, INCREMENTAL_STD)
            if WholeWordMode.ORDER in modes else None
        )
        self.propagates = self.node_table is not None and settings.variant != "no_graph" and settings.n_layers > 0
        if self.propagates:
            if adjacency is None:
                raise ValueError(f"variant {settings.variant!r} propagates over the graph: pass the adjacency")
            if tuple(adjacency.shape) != (self.n_nodes, self.n_nodes):
                raise ValueError(f"adjacency shape {adjacency.shape} != (U+I+1, U+I+1) = {(self.n_nodes,) * 2}")
        sparse = to_torch_sparse(adjacency) if self.propagates else None
        self.register_buffer("adjacency", sparse, persistent=False)  # data, not a parameter; not saved
        # POD soft prompts: prompt_num vectors per task, N(0, 1) like the authors' nn.Embedding.
        self.prompts = nn.ParameterDict(
            {t.value: nn.Parameter(torch.randn(settings.prompt_num, d_model)) for t in self.tasks}
            if settings.prompt_num
            else {}
        )
        self._cache: tuple[tuple[Any, ...], torch.Tensor] | None = None  # eval-mode propagated table
        self._in_step = False  # inside `propagation_once`
        self._step_table: tuple[torch.Tensor, torch.Tensor] | None = None  # there: (propagated table, its leaf copy)

    def ww_mode(self, task: Task) -> WholeWordMode:
        """Which ww id scheme prompts of `task` use: graph node indices or order of appearance."""
        if Task(task) is Task.SEQUENTIAL and self.settings.variant != "no_incremental":
            return WholeWordMode.ORDER
        return WholeWordMode.NODE

    def encode(self, tokenizer: Any, prompts: Sequence[Prompt] | Sequence[str], task: Task) -> Encoded:
        """Tokenize prompts (or bare texts) with the ww ids this model expects for `task`, checked against the
        size of the table they index."""
        mode = self.ww_mode(task)
        table = self.incremental_table if mode is WholeWordMode.ORDER else self.node_table
        return encode(tokenizer, prompts, mode, n_users=self.n_users,
                      table_size=None if table is None else table.num_embeddings)

    def train(self, mode: bool = True) -> ELMRec:
        self._cache = None  # weights may change in train mode, and in any mode switch around it
        return super().train(mode)

    def node_embeddings(self) -> torch.Tensor:
        """The graph-aware ww table (N, d), row 0 zero. Recomputed when training or when grads are on;
        cached otherwise (eval + no_grad) until the model leaves eval mode (`train()` clears the cache: an
        optimizer step, fused ones included, may change the table without any trace on the tensor)."""
        if self.node_table is None:
            raise ValueError(f"no node table: variant {self.settings.variant!r} with tasks {self.tasks}")
        weight = self.node_table.weight
        if not self.propagates:
            return _zero_row0(weight)
        if self._in_step:
            if self._step_table is None:  # the step's first use: propagate once for all its micro-batches
                table = _zero_row0(_propagate(self.adjacency, weight, self.settings.n_layers))
                self._step_table = (table, table.detach().requires_grad_(True))
            return self._step_table[1]
        if self.training or torch.is_grad_enabled():
            return _zero_row0(_propagate(self.adjacency, weight, self.settings.n_layers))
        key = (weight.data_ptr(), weight.device, weight.dtype, self.adjacency.device)  # moved or cast: recompute
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, _zero_row0(_propagate(self.adjacency, weight, self.settings.n_layers)))
        return self._cache[1]

    @contextmanager
    def propagation_once(self) -> Iterator[None]:
        """One optimizer step's forwards and backwards (micro-batches) share one propagated table.

        Inside, the first call of `node_embeddings` propagates, and it and every later one return a detached copy
        of the propagated table that collects the gradients of every backward; on leaving, that gradient goes
        back through the propagation once. The weights' gradient is the same as propagating per forward (the
        gradient is linear in the table's), at the cost of one propagation and one backward through it per step
        instead of one per micro-batch; a step that never reads the node table (sequential prompts, which index
        the incremental table) propagates nothing. Does nothing when the model does not propagate or gradients
        are off."""
        if not self.propagates or not torch.is_grad_enabled() or self._in_step:
            yield
            return
        self._in_step = True
        try:
            yield
        finally:
            self._in_step, step, self._step_table = False, self._step_table, None
        if step is not None and step[1].grad is not None:  # reached only when the body raised nothing
            step[0].backward(step[1].grad)

    def ww_table(self, task: Task) -> torch.Tensor:
        """The ww table (rows, d) prompts of `task` index; row 0 is zero."""
        if self.ww_mode(task) is WholeWordMode.NODE:
            return self.node_embeddings()
        if self.incremental_table is None:
            raise ValueError(f"no incremental table: task {Task(task).value!r} not among {self.tasks}")
        return _zero_row0(self.incremental_table.weight)

    def encoder_inputs(
        self, input_ids: torch.Tensor, ww_ids: torch.Tensor, attention_mask: torch.Tensor, task: Task
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds (B, P+L, d), attention_mask (B, P+L)) for the T5 encoder."""
        task = Task(task)
        if task not in self.tasks:
            raise ValueError(f"task {task.value!r} not among the model's tasks {[t.value for t in self.tasks]}")
        if ww_ids.shape != input_ids.shape:
            raise ValueError(f"ww_ids shape {tuple(ww_ids.shape)} != input_ids shape {tuple(input_ids.shape)}")
        embeds = self.t5.get_input_embeddings()(input_ids)  # (B, L, d)
        if self.alpha != 0.0:
            table = self.ww_table(task)  # (rows, d)
            # Checked on the CPU only: on CUDA it would stall the host every step (`encode` checks every id
            # against the table size already, and the embedding kernel fails on an out-of-range one).
            if ww_ids.device.type == "cpu" and ww_ids.numel() and (
                    int(ww_ids.min()) < 0 or int(ww_ids.max()) >= table.shape[0]):
                raise ValueError(f"{self.ww_mode(task)} ww ids must lie in [0, {table.shape[0]})")
            embeds = embeds + self.alpha * F.embedding(ww_ids, table).to(embeds.dtype)  # (B, L, d)
        n_prompts = self.settings.prompt_num
        if n_prompts:
            batch = input_ids.shape[0]
            prompts = self.prompts[task.value].to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)  # (B, P, d)
            embeds = torch.cat([prompts, embeds], dim=1)  # (B, P+L, d)
            attention_mask = torch.cat([attention_mask.new_ones(batch, n_prompts), attention_mask], dim=1)
        return embeds, attention_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        ww_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task: Task,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Stock T5 forward on the ELMRec encoder inputs; `kwargs` go to T5 (decoder_input_ids, ...)."""
        embeds, mask = self.encoder_inputs(input_ids, ww_ids, attention_mask, task)
        return self.t5(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, ww_ids: torch.Tensor, attention_mask: torch.Tensor, task: Task, **kwargs: Any
    ) -> torch.LongTensor:
        """Decoder token ids from stock `T5.generate` (beam search etc. through `kwargs`)."""
        embeds, mask = self.encoder_inputs(input_ids, ww_ids, attention_mask, task)
        return self.t5.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)

    # ------------------------------------------------------------ checkpoints

    def save(self, directory: Path) -> None:
        """`directory/` = t5/ (save_pretrained, safetensors) + elmrec_tables.safetensors + elmrec.json.
        Written to a sibling temp folder first and renamed into place, so a crash leaves the old checkpoint."""
        with atomic_dir(Path(directory)) as staging:
            self.t5.save_pretrained(staging / T5_DIR)
            tables = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("t5.")}
            save_file(tables, str(staging / TABLES_FILE))
            meta = {
                "format_version": FORMAT_VERSION,
                "settings": self.settings.model_dump(mode="json"),
                "n_users": self.n_users,
                "n_items": self.n_items,
                "tasks": [t.value for t in self.tasks],
            }
            (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        directory: Path,
        adjacency: sp.spmatrix | sp.sparray | None = None,
        map_location: str | torch.device = "cpu",
    ) -> ELMRec:
        """A model saved by `save`, in eval mode on `map_location`. Pass the same adjacency when it propagates."""
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: checkpoint format {meta.get('format_version')} != {FORMAT_VERSION}")
        settings = ModelSettings.model_validate(meta["settings"])
        t5 = T5ForConditionalGeneration.from_pretrained(directory / T5_DIR, local_files_only=True)
        model = cls(t5, settings, meta["n_users"], meta["n_items"], adjacency, [Task(t) for t in meta["tasks"]])
        result = model.load_state_dict(load_file(str(directory / TABLES_FILE)), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("t5.")]
        if missing or result.unexpected_keys:
            raise ValueError(f"{directory}: tables do not match the model (missing {missing}, "
                             f"unexpected {result.unexpected_keys})")
        return model.to(map_location).eval()
