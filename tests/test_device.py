"""Device and precision choice: bf16 autocast by default where it is the faster precision (CUDA, CPUs with AMX
bf16 tiles, AMD CPUs with AVX512-BF16), fp32 elsewhere (Intel CPUs with AVX512-BF16 alone too); an explicit setting
always wins."""

from __future__ import annotations

import pytest
import torch

import elmrec.device
from elmrec.device import Device, cpu_bf16_is_faster, cpu_has_bf16_tiles, cpu_supports_bf16

CPUINFO_X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
CPUINFO_AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
CPUINFO_AMD_OLD = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx2 fma\n"  # Zen 3
CPUINFO_ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"
CPUINFO_OLD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"  # AVX-512 without its bf16 part
CPUINFO_AMX = "processor\t: 0\nflags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"


def test_cpu_bf16_is_read_from_the_cpu_flags() -> None:
    assert cpu_supports_bf16(CPUINFO_X86) and cpu_supports_bf16(CPUINFO_ARM) and cpu_supports_bf16(CPUINFO_AMX)
    assert not cpu_supports_bf16(CPUINFO_OLD) and not cpu_supports_bf16("")
    assert cpu_has_bf16_tiles(CPUINFO_AMX)
    assert not any(cpu_has_bf16_tiles(info) for info in (CPUINFO_X86, CPUINFO_ARM, CPUINFO_OLD, CPUINFO_AMD, ""))


def test_bf16_is_the_faster_cpu_precision_with_amx_tiles_or_on_amd_with_avx512_bf16() -> None:
    assert cpu_bf16_is_faster(CPUINFO_AMX) and cpu_bf16_is_faster(CPUINFO_AMD)
    assert not any(cpu_bf16_is_faster(info) for info in (CPUINFO_X86, CPUINFO_ARM, CPUINFO_OLD, CPUINFO_AMD_OLD, ""))


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_cpu_auto_precision_is_bf16_only_where_bf16_is_faster(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                        expected: torch.dtype | None) -> None:
    monkeypatch.setattr(elmrec.device, "cpu_bf16_is_faster", lambda: native)
    monkeypatch.setattr(elmrec.device, "cpu_supports_bf16", lambda: True)  # bf16 instructions alone do not count
    assert Device.resolve("cpu") == Device(torch.device("cpu"), expected)
    assert Device.resolve("cpu", "fp32").amp_dtype is None and Device.resolve("cpu", "bf16").amp_dtype == torch.bfloat16


def test_cpu_precision_follows_the_setting() -> None:
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
def test_without_cuda_auto_is_cpu_and_cuda_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elmrec.device, "cpu_bf16_is_faster", lambda: False)
    assert Device.resolve("auto", "auto") == Device(torch.device("cpu"), None)
    with pytest.raises(RuntimeError, match="device 'cuda' requested but CUDA is not available"):
        Device.resolve("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_with_cuda_auto_is_cuda_in_bf16() -> None:
    assert Device.resolve("auto") == Device(torch.device("cuda"), torch.bfloat16)
    assert Device.resolve("auto", "fp32").amp_dtype is None
