"""Plain against chunked whole-catalogue cross-entropy (elmrec.softmax_loss), forward + backward, taking turns.

    python benchmarks/softmax_loss.py [--positions 683] [--items 18357] [--dim 64] [--chunk 256] [--rounds 15]

The defaults are a SASRec batch on Sports: 128 users, ~683 next-item positions, 18,357 items, d = 64.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmrec.softmax_loss import CHUNK_ITEMS, PLAIN_MAX_LOGITS, full_softmax_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=683)
    parser.add_argument("--items", type=int, default=18357)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=CHUNK_ITEMS)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(args.positions, args.dim, generator=generator)
    weight = torch.randn(args.items, args.dim, generator=generator).requires_grad_()
    target = torch.randint(0, args.items, (args.positions,), generator=generator)
    losses = {"plain": lambda s: F.cross_entropy(s @ weight.T, target),
              "chunked": lambda s: full_softmax_loss(s, weight, target, args.chunk, plain_max=0)}
    seconds: dict[str, list[float]] = {name: [] for name in losses}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, loss_fn in losses.items():
            start = time.perf_counter()
            loss_fn(states.clone().requires_grad_()).backward()
            if round_:
                seconds[name].append(time.perf_counter() - start)
            weight.grad = None
    plain, chunked = (statistics.median(seconds[name]) for name in losses)
    print(f"{args.positions} positions x {args.items} items, d {args.dim}, chunk {args.chunk}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"plain {1e3 * plain:.1f} ms, chunked {1e3 * chunked:.1f} ms (medians of {args.rounds}, forward + "
          f"backward): chunked is {plain / chunked:.2f}x faster")
    chosen = "plain" if args.positions * args.items <= PLAIN_MAX_LOGITS else "chunked"
    print(f"elmrec.softmax_loss.full_softmax_loss takes the {chosen} loss for this shape "
          f"(plain up to {PLAIN_MAX_LOGITS:,} logits)")


if __name__ == "__main__":
    main()
