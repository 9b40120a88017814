"""elmrec.softmax_loss: the chunked whole-catalogue cross-entropy equals the plain one, value and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from elmrec.softmax_loss import full_softmax_loss


def plain_and_chunked(positions: int, items: int, dim: int, chunk: int, seed: int = 0, plain_max: int = 0):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(positions, dim, generator=generator)
    weight = torch.randn(items, dim, generator=generator)
    target = torch.randint(0, items, (positions,), generator=generator)
    results = []
    plain = lambda s, w: F.cross_entropy(s @ w.T, target)  # noqa: E731
    ours = lambda s, w: full_softmax_loss(s, w, target, chunk, plain_max)  # noqa: E731
    for loss_fn in (plain, ours):
        s, w = states.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = loss_fn(s, w)
        loss.backward()
        results.append((loss.detach(), s.grad, w.grad))
    return results


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])  # 1000: one chunk holds every item
def test_equals_plain_cross_entropy_with_any_chunk(chunk: int) -> None:
    (plain, plain_gs, plain_gw), (ours, gs, gw) = plain_and_chunked(positions=37, items=300, dim=16, chunk=chunk)
    assert torch.allclose(ours, plain, rtol=0, atol=1e-5)
    # float rounding only: chunk 1 sums 300 products one by one and strays by ~1e-6 on gradients of ~0.1
    assert torch.allclose(gs, plain_gs, rtol=0, atol=5e-6)
    assert torch.allclose(gw, plain_gw, rtol=0, atol=5e-6)


def test_repeated_targets_accumulate_their_gradient() -> None:
    states = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 0, 0])
    loss = full_softmax_loss(states, weight, target, chunk=2, plain_max=0)
    loss.backward()
    # by hand: row p's loss is logsumexp(h_p . W) - h_p . W_0
    expected = (math.log(math.e + 1 + 1) - 1 + math.log(1 + math.e + 1) - 0 + math.log(math.e + math.e + 1) - 1) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    states2, weight2 = states.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    F.cross_entropy(states2 @ weight2.T, target).backward()
    assert torch.allclose(weight.grad, weight2.grad, atol=1e-6)
    assert torch.allclose(states.grad, states2.grad, atol=1e-6)


@pytest.mark.parametrize("plain_max", [0, 10**6])  # chunked, plain
def test_stays_fp32_under_autocast_and_returns_input_dtypes(plain_max: int) -> None:
    (plain, _, _), _ = plain_and_chunked(positions=5, items=40, dim=8, chunk=16, seed=3)
    generator = torch.Generator().manual_seed(3)
    states = torch.randn(5, 8, generator=generator).requires_grad_()
    weight = torch.randn(40, 8, generator=generator).requires_grad_()
    target = torch.randint(0, 40, (5,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = full_softmax_loss(states, weight, target, chunk=16, plain_max=plain_max)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(plain.item(), abs=1e-5)  # bf16 matrix products would miss by ~1e-2
    assert states.grad.dtype == weight.grad.dtype == torch.float32


def test_plain_below_the_threshold_chunked_above(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("elmrec.softmax_loss._ChunkedSoftmaxLoss.apply", lambda *a: calls.append(a) or a[0].sum())
    states, weight, target = torch.zeros(4, 2), torch.zeros(10, 2), torch.zeros(4, dtype=torch.long)
    assert full_softmax_loss(states, weight, target, plain_max=40).item() == pytest.approx(math.log(10))
    assert calls == []
    full_softmax_loss(states, weight, target, plain_max=39)
    assert len(calls) == 1


def test_no_positions_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one position"):
        full_softmax_loss(torch.zeros(0, 4), torch.zeros(10, 4), torch.zeros(0, dtype=torch.long))
