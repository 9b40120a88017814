"""elmrec.memory: after reuse_freed_memory, training steps stop mapping fresh memory once the heap has grown, and
release_freed_memory gives the free pages back.

In a fresh process (a heap policy lasts for the process), eight training steps of a small network whose hidden
activations take 64 MiB (2048 x 8192 floats), then eight more after reuse_freed_memory, each step's page faults
counted: a fault is a page the kernel maps in, zero-filled, the work that reusing memory saves. Then the resident
memory before and after release_freed_memory, and the faults of the two steps after it.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PAGES_64_MIB = 64 * 2**20 // 4096
PROBE = """
import json, resource
import torch
from pathlib import Path
from elmrec.memory import release_freed_memory, reuse_freed_memory

torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(16, 8192), torch.nn.ReLU(), torch.nn.Linear(8192, 16))
optimizer = torch.optim.AdamW(net.parameters())
batch = torch.randn(2048, 16)

def faults_of_steps():
    faults = []
    for _ in range(8):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(batch).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    return faults

def rss_pages():
    return int(Path("/proc/self/statm").read_text().split()[1])

system = faults_of_steps()
reused, reuse = reuse_freed_memory(), faults_of_steps()
kept = rss_pages()
released = release_freed_memory()
print(json.dumps({"system": system, "reused": reused, "reuse": reuse, "released": released, "kept_rss": kept,
                  "released_rss": rss_pages(), "after_release": faults_of_steps()[:3]}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_steps_reuse_the_memory_of_earlier_steps_instead_of_mapping_it_afresh() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert min(probe["system"]) >= PAGES_64_MIB  # glibc's default: every step maps its large tensors afresh
    assert probe["reused"] is True
    later = probe["reuse"][1:]  # the first step grows the heap (and the next few, a little)
    assert min(later) == 0 and sum(later) < sum(probe["system"][1:]) / 4, probe
    assert probe["released"] is True
    assert probe["kept_rss"] - probe["released_rss"] >= PAGES_64_MIB, probe  # the steps' free blocks, given back
    first = probe["after_release"][0]  # the next step faults them in again; the heap may regrow a block or two over
    #   the next steps (16,384 pages each, as later steps of `reuse` may), far from mapping every step afresh
    assert first >= PAGES_64_MIB and sum(probe["after_release"]) < 2 * min(probe["system"]), probe


def test_heap_for_reuses_only_for_reuse_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from elmrec import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: calls.append("reuse") or True)
    assert not memory.heap_for("system", "cpu") and not memory.heap_for("reuse", "cuda") and calls == []
    assert memory.heap_for("reuse", "cpu") and calls == ["reuse"]


def test_releases_for_gives_the_interval_only_where_the_heap_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    from elmrec import memory

    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: True)
    assert [memory.releases_for(malloc, device) for malloc, device in
            [("reuse", "cpu"), ("system", "cpu"), ("reuse", "cuda")]] == [memory.RELEASE_EVERY, 0, 0]


@pytest.mark.parametrize(("n_steps", "every", "expected"), [
    (5, 2, ["release", "step 1", "step 2", "release", "step 3", "step 4", "release", "step 5", "release"]),
    (4, 2, ["release", "step 1", "step 2", "release", "step 3", "step 4", "release"]),  # the end just released
    (1, 3, ["release", "step 1", "release"]),
    (3, 0, ["step 1", "step 2", "step 3"]),  # 0: never
    (0, 2, []),  # no steps, nothing to give back
])
def test_releasing_gives_pages_back_before_the_first_step_after_every_nth_and_after_the_last(
        monkeypatch: pytest.MonkeyPatch, n_steps: int, every: int, expected: list[str]) -> None:
    from elmrec import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append("release") or True)
    for step in memory.releasing(range(1, n_steps + 1), every):
        calls.append(f"step {step}")  # the loop body runs before the release that follows its step
    assert calls == expected
