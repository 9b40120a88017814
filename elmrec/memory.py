"""The process's heap on a CPU: memory that a step (training, evaluation) frees is kept for the next one.

glibc's malloc serves every block above 32 MiB with a fresh mmap and unmaps it when it is freed. A training step
on the CPU allocates and frees dozens of such tensors (a direct batch of 16: the attention scores of one layer,
16 x 8 heads x 410 x 410 floats, are 86 MB), so every step the kernel maps their pages in again, one zero-filled
page fault per 4 KiB: an 86 MB product took 18 ms in fresh memory and 6 ms in reused memory on a 2-core Xeon
(2026-12-02). `reuse_freed_memory` turns both off through mallopt(3): no mmap for large blocks (M_MMAP_MAX 0),
so they come from the heap, and no trimming of the heap's free top (M_TRIM_THRESHOLD -1), so freed blocks stay
mapped for the next step. The cost: free blocks stay resident, and since they are reused by first fit among
blocks of other sizes (batches differ in length), the heap spreads over more pages than a step needs: over 60
pairs of steps of full t5-small its resident memory crept from 5.6 to 9.5 GiB and had not stopped (2026-12-03).
So a training or an evaluation on the reused heap gives the pages of its free blocks back every `RELEASE_EVERY`
steps (optimizer steps, decoding batches), before its loop's first step and after its last (`releasing`,
`release_freed_memory`, malloc_trim(3)); the blocks stay in the heap, and the step after a release faults in again
what it writes. README, Speed: the measurements.

glibc only (Linux): elsewhere (musl, macOS, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
from collections.abc import Iterable, Iterator
from typing import TypeVar

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (<malloc.h>)
RELEASE_EVERY = 20  # steps (optimizer steps, decoding batches) between two releases of the reused heap's free pages
log = logging.getLogger(__name__)
T = TypeVar("T")


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


def release_freed_memory() -> bool:
    """Give the pages of every free block of the heap back to the kernel (malloc_trim(3), which also releases whole
    free pages inside the heap, not only at its top); the blocks stay in the heap for reuse, their pages faulted in
    again when next written. True where it ran (glibc)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    malloc_trim(0)  # returns whether anything was released
    return True


def heap_for(malloc: str, device: str) -> bool:
    """The heap `train.malloc` asks for, on `device` (a torch device type): `reuse_freed_memory` for "reuse" on the
    CPU (True where it took effect, and logged); nothing for "system", or on an accelerator, whose tensors are not
    on the heap."""
    reused = malloc == "reuse" and device == "cpu" and reuse_freed_memory()
    if reused:
        log.info("the heap keeps freed memory for the next step (train.malloc=reuse)")
    return reused


def releases_for(malloc: str, device: str) -> int:
    """The heap `train.malloc` asks for, on `device` (heap_for), and the steps between two releases of its free
    pages: RELEASE_EVERY where the heap is reused, 0 (never) elsewhere."""
    return RELEASE_EVERY if heap_for(malloc, device) else 0


def releasing(steps: Iterable[T], every: int) -> Iterator[T]:
    """`steps`, one at a time; before the first (what the work before the loop freed), after every `every`-th
    (once the loop body that took it has run) and after the last, the reused heap's free pages are given back
    (release_freed_memory). `every` 0: never."""
    done = 0
    for done, step in enumerate(steps, start=1):
        if every and done == 1:
            release_freed_memory()
        yield step
        if every and done % every == 0:
            release_freed_memory()
    if every and done % every:
        release_freed_memory()
