"""Device and precision choice: CPU trains in exact fp32 unless bf16 is asked for; CUDA defaults to bf16."""

from __future__ import annotations

import pytest
import torch

from elmrec.device import Device


def test_cpu_precision_follows_the_setting() -> None:
    assert Device.resolve("cpu") == Device(torch.device("cpu"), None)  # auto on CPU: exact fp32
    assert Device.resolve("cpu", "bf16").amp_dtype == torch.bfloat16
    assert Device.resolve("cpu", "fp32").describe() == "cpu (fp32)"
    assert Device.resolve("cpu", "bf16").describe() == "cpu (bf16 autocast)"


def test_autocast_runs_matmuls_in_bf16_only_when_asked() -> None:
    a = torch.ones(2, 2)
    with Device.resolve("cpu", "bf16").autocast():
        assert (a @ a).dtype == torch.bfloat16
    with Device.resolve("cpu", "fp32").autocast():
        assert (a @ a).dtype == torch.float32


def test_put_moves_every_tensor_of_a_batch() -> None:
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.ones(2, 1, dtype=torch.long)}
    moved = Device.resolve("cpu").put(batch)
    assert moved.keys() == batch.keys() and all(torch.equal(moved[k], batch[k]) for k in batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_put_copies_to_cuda_through_pinned_memory() -> None:
    batch = {"input_ids": torch.arange(6).reshape(2, 3)}
    moved = Device.resolve("cuda").put(batch)
    assert moved["input_ids"].is_cuda and torch.equal(moved["input_ids"].cpu(), batch["input_ids"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_auto_is_cpu_and_cuda_is_an_error() -> None:
    assert Device.resolve("auto", "auto") == Device(torch.device("cpu"), None)
    with pytest.raises(RuntimeError, match="device 'cuda' requested but CUDA is not available"):
        Device.resolve("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_with_cuda_auto_is_cuda_in_bf16() -> None:
    assert Device.resolve("auto") == Device(torch.device("cuda"), torch.bfloat16)
    assert Device.resolve("auto", "fp32").amp_dtype is None
