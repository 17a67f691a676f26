"""Which floating-point precision runs: `auto`, `fp32` or `bf16`, for training, sampling and scoring.

`auto` is bf16 only where the device multiplies bf16 matrices fast: a GPU that supports bf16, or a
CPU with AMX or AVX-512 BF16 units. Elsewhere bf16 is emulated and far slower than fp32 (measured on
an AMD EPYC without those units: 2 GFLOP/s in bf16 against 110 in fp32), so `auto` is fp32 there.
Training in bf16 is mixed precision (float32 master weights, bf16 autocast), so checkpoints stay
float32; sampling and scoring in bf16 cast the weights once.
"""

from __future__ import annotations

import functools

CHOICES = ("auto", "fp32", "bf16")


def check(value: str, section: str) -> None:
    if value not in CHOICES:
        raise ValueError(f"{section}.precision must be one of {', '.join(CHOICES)}, not {value!r}")


@functools.lru_cache(maxsize=1)
def fast_bf16() -> bool:
    """Whether this machine's device multiplies bf16 matrices in hardware."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return True
    try:  # older torch: the CPU's own flags
        flags = open("/proc/cpuinfo").read().split()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        return False


def resolve(value: str) -> str:
    """'fp32' or 'bf16': what `value` means on this machine."""
    check(value, "precision")
    if value == "auto":
        return "bf16" if fast_bf16() else "fp32"
    return value


def dtype(value: str):
    """The torch dtype that weights are cast to for sampling and scoring."""
    import torch

    return torch.bfloat16 if resolve(value) == "bf16" else torch.float32
