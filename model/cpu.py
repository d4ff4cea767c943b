"""CPU runtime settings shared by ``igrec train`` and ``igrec evaluate``."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc serve large blocks from its heap and never return freed memory to the system.

    A training step allocates and frees several [B, V] buffers (22 MB in bf16 at B=256 on Diginetica).
    By default glibc maps each one afresh and unmaps it on free, so every step page-faults and zero-fills
    them again: about 10 % of a CPU step. Kept in the heap, the next step reuses the same pages. The cost
    is that the process keeps its peak heap until it exits. Returns whether the settings were applied
    (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def configure_torch(threads: int | None) -> None:
    """Intra-op threads (None = all cores), denormals flushed to zero, freed memory kept (above)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()
