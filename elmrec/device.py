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
        """auto: CUDA when available, else CPU; precision auto: bf16 autocast where bf16 is the faster precision
        (CUDA: torch.cuda.is_bf16_supported(); CPU: `cpu_bf16_is_faster`), else fp32. The CPU's rule is the verdict
        of benchmarks/precision_check.py (quality), benchmarks/train_throughput.py and benchmarks/matmul_precision.py
        (speed): README, Speed."""
        if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {name!r} requested but CUDA is not available")
            device, native = torch.device("cuda"), torch.cuda.is_bf16_supported()
        else:
            device, native = torch.device("cpu"), cpu_bf16_is_faster()
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
CPU_BF16_TILE_FLAGS = frozenset({"amx_bf16"})  # x86 AMX: bf16 matrix products on tile units
AMD_VENDOR = "AuthenticAMD"  # x86 vendor_id


@functools.cache
def _proc_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 instructions at all (x86: the AVX512-BF16 or AMX-BF16 flag of /proc/cpuinfo;
    Arm: the BF16 feature); without them bf16 autocast on a CPU is emulated. Having them is not enough for bf16 to
    be faster: see `cpu_bf16_is_faster`. False where it cannot be told (no /proc/cpuinfo)."""
    return bool(_cpu_flags(cpuinfo) & CPU_BF16_FLAGS)


def cpu_bf16_is_faster(cpuinfo: str | None = None) -> bool:
    """Whether bf16 autocast is the default on this CPU: where its bf16 matrix products were measured faster than
    fp32 ones. AMX tiles (`cpu_has_bf16_tiles`), and AMD CPUs with AVX512-BF16 (Zen 4 and later): on an AMD EPYC
    of family 26 (Zen 5) t5-small's products ran 4-9x faster in bf16 (benchmarks/matmul_precision.py,
    2026-12-02). Not Intel CPUs with AVX512-BF16 alone: on a Xeon without AMX, oneDNN's bf16 products
    (brg_matmul:avx512_core_bf16) ran 1.4x slower than fp32 ones and the training step 1.16x slower (README,
    Speed). Elsewhere (Arm, unknown) fp32. False where it cannot be told (no /proc/cpuinfo)."""
    flags = _cpu_flags(cpuinfo)
    return cpu_has_bf16_tiles(cpuinfo) or ("avx512_bf16" in flags and _cpu_vendor(cpuinfo) == AMD_VENDOR)


def cpu_has_bf16_tiles(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 matrices on AMX tiles (x86 flag amx_bf16)."""
    return bool(_cpu_flags(cpuinfo) & CPU_BF16_TILE_FLAGS)


def _cpu_vendor(cpuinfo: str | None) -> str | None:
    """The x86 vendor_id of /proc/cpuinfo (or of the given text); None when unknown."""
    for key, value in _cpu_fields(cpuinfo):
        if key == "vendor_id":
            return value.strip()
    return None


def _cpu_flags(cpuinfo: str | None) -> set[str]:
    """The x86 flags / Arm features of /proc/cpuinfo (or of the given text), lower case; empty when unknown."""
    flags: set[str] = set()
    for key, value in _cpu_fields(cpuinfo):
        if key in ("flags", "features"):
            flags.update(value.lower().split())
    return flags


def _cpu_fields(cpuinfo: str | None) -> list[tuple[str, str]]:
    """The (lower-case key, value) lines of /proc/cpuinfo, or of the given text."""
    cpuinfo = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    return [(key.strip().lower(), value) for key, _, value in
            (line.partition(":") for line in (cpuinfo or "").splitlines())]
