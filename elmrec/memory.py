"""The process's heap on a CPU: memory that a step (training, evaluation) frees is kept for the next one.

glibc's malloc serves every block above 32 MiB with a fresh mmap and unmaps it when it is freed. A training step
on the CPU allocates and frees dozens of such tensors (a direct batch of 16: the attention scores of one layer,
16 x 8 heads x 410 x 410 floats, are 86 MB), so every step the kernel maps their pages in again, one zero-filled
page fault per 4 KiB: an 86 MB product took 18 ms in fresh memory and 6 ms in reused memory on a 2-core Xeon
(2026-12-02). `reuse_freed_memory` turns both off through mallopt(3): no mmap for large blocks (M_MMAP_MAX 0),
so they come from the heap, and no trimming of the heap's free top (M_TRIM_THRESHOLD -1), so freed blocks stay
mapped for the next step. The cost: the process keeps its peak resident memory until it exits (the heap never
shrinks), and may hold somewhat more than its peak, since freed blocks are reused by first fit. README, Speed: the
measurements.

glibc only (Linux): elsewhere (musl, macOS, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (<malloc.h>)
log = logging.getLogger(__name__)


@functools.cache
def reuse_freed_memory() -> bool:
    """Keep freed memory in this process's heap from now on (module docstring). True where it took effect (glibc),
    False where the C library is another. Once per process; irreversible while it lives."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 disables trimming entirely (mallopt(3)); both return 1 on success
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1


def heap_for(malloc: str, device: str) -> bool:
    """The heap `train.malloc` asks for, on `device` (a torch device type): `reuse_freed_memory` for "reuse" on the
    CPU (True where it took effect, and logged); nothing for "system", or on an accelerator, whose tensors are not
    on the heap."""
    reused = malloc == "reuse" and device == "cpu" and reuse_freed_memory()
    if reused:
        log.info("the heap keeps freed memory for the next step (train.malloc=reuse)")
    return reused
