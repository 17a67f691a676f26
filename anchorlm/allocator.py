"""glibc's allocator told to keep, for the next step, the memory a step frees.

A training step allocates and frees the same large tensors every step: activations, their
gradients, the output layer's logits over the vocabulary (SmolLM2 at 8 x 256 tokens: 400 MB in
float32). glibc serves every block above its mmap threshold (32 MB at most) with a fresh `mmap`
and unmaps it on free, and gives the top of its heap back to the system past 128 KB free, so each
step faults in the same gigabytes of zeroed pages again: measured on 2 cores (Zen 4), 740,000
page faults and 2.8 s of kernel time a SmolLM2 step at 8 x 256 (`benchmarks/bench.py` measures the
step both ways and counts the faults; `benchmarks/memory.py --training` compares the two in fresh
processes: 1.24x the tokens/s for 11% more peak memory in docs/benchmarks-memory-training.json).
A decode step does the same on a smaller scale (the logits over the vocabulary and the draw's
passes over them: SmolLM2 at batch 96 in bf16, 470,000-550,000 faults and about 1 s of kernel time
an engine call of 48 tokens, docs/benchmarks-memory-sampling.json), and
`engine.generate` and the server's worker call it too (`benchmarks/memory.py --sampling`).

`keep_freed_memory` turns both off for the process (`mallopt`: no mmap for large blocks, no heap
trimming), as Intel's PyTorch CPU guide does with jemalloc or tcmalloc preloaded, without either.
The process keeps its high-water mark of memory until it ends; what it computes does not change.
It does nothing off glibc, where `MALLOC_*` variables or GLIBC_TUNABLES already set glibc's
allocator (the user's choice stands), or where ANCHORLM_MALLOC=default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
_done = False


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed memory instead of returning it to the system (once per process).
    True where it was told, now or before."""
    global _done
    if _done:
        return True
    if sys.platform != "linux" or os.environ.get("ANCHORLM_MALLOC") == "default":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc's; musl has none
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; -1 as the trim threshold disables trimming (mallopt(3))
    _done = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    return _done
