"""elmrec.memory: after reuse_freed_memory, training steps stop mapping fresh memory once the heap has grown.

In a fresh process (a heap policy lasts for the process), eight training steps of a small network whose hidden
activations take 64 MiB (2048 x 8192 floats), then eight more after reuse_freed_memory, each step's page faults
counted: a fault is a page the kernel maps in, zero-filled, the work that reusing memory saves.
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
from elmrec.memory import reuse_freed_memory

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

system = faults_of_steps()
print(json.dumps({"system": system, "reused": reuse_freed_memory(), "reuse": faults_of_steps()}))
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


def test_heap_for_reuses_only_for_reuse_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from elmrec import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: calls.append("reuse") or True)
    assert not memory.heap_for("system", "cpu") and not memory.heap_for("reuse", "cuda") and calls == []
    assert memory.heap_for("reuse", "cpu") and calls == ["reuse"]
