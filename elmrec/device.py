"""Where the model runs and in which precision, as `train.device` / `train.precision` choose."""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Device:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None = full fp32

    @classmethod
    def resolve(cls, name: str, precision: str = "auto") -> Device:
        """auto: CUDA when available, else CPU; precision auto: bf16 autocast where the device does bf16 natively
        (CUDA: torch.cuda.is_bf16_supported(); CPU: `cpu_supports_bf16`), else fp32. The CPU's default is the
        verdict of benchmarks/precision_check.py (README, Speed)."""
        if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {name!r} requested but CUDA is not available")
            device, native = torch.device("cuda"), torch.cuda.is_bf16_supported()
        else:
            device, native = torch.device("cpu"), cpu_supports_bf16()
        bf16 = precision == "bf16" or (precision == "auto" and native)
        return cls(device, torch.bfloat16 if bf16 else None)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def put(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch on the device. To CUDA through pinned host memory, so the copies are asynchronous (the host
        queues the step's kernels meanwhile); on the CPU, the tensors themselves."""
        if self.device.type != "cuda":
            return {k: v.to(self.device) for k, v in batch.items()}
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    def describe(self) -> str:
        return f"{self.device.type} ({'fp32' if self.amp_dtype is None else 'bf16 autocast'})"


CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 /proc/cpuinfo flags; "bf16": Arm Features


@functools.cache
def _proc_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU does bf16 arithmetic natively, where bf16 autocast pays off (x86: the AVX512-BF16 or
    AMX-BF16 flag of /proc/cpuinfo; Arm: the BF16 feature). False where it cannot be told (no /proc/cpuinfo).
    Without these, bf16 autocast on a CPU is emulated and slower than fp32."""
    cpuinfo = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    if cpuinfo is None:
        return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and CPU_BF16_FLAGS & set(value.split()):
            return True
    return False
