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
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def describe(self) -> str:
        return f"{self.device.type} ({'fp32' if self.amp_dtype is None else 'bf16 autocast'})"
