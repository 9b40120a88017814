"""Where the model runs and in which precision, as `train.device` / `train.precision` choose."""

from __future__ import annotations

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
        """auto: CUDA when available, else CPU; precision auto: bf16 autocast on CUDA (if supported), fp32 on CPU."""
        if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {name!r} requested but CUDA is not available")
            device = torch.device("cuda")
            bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
        else:
            device, bf16 = torch.device("cpu"), precision == "bf16"
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


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU does bf16 arithmetic natively, where bf16 autocast pays off (x86: the AVX512-BF16 or
    AMX-BF16 flag of /proc/cpuinfo; Arm: the BF16 feature). False where it cannot be told (no /proc/cpuinfo).
    Without these, bf16 autocast on a CPU is emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and CPU_BF16_FLAGS & set(value.split()):
            return True
    return False
