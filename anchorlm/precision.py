"""Which floating-point precision runs: `auto`, `fp32` or `bf16`, for training, sampling and scoring.

`auto` is bf16 only where it is measured faster and where it does not change small models' numbers:

- a GPU that supports bf16: always (its tensor cores multiply bf16 at many times the fp32 rate);
- a CPU with AMX or AVX-512 BF16 units: for models of hidden size >= `BF16_MIN_HIDDEN` (256).
  Measured on an AMD EPYC with AVX-512 BF16 (2 cores; `benchmarks/bench.py` prints the line for
  the machine it runs on), a training step runs 1.5-2.1x faster in bf16 at hidden sizes 256-576,
  but only 1.1-1.3x at 64-128, within what a loaded machine varies; another session measured no
  gain there at all on a Zen 5. Below the line fp32 is kept, so the tiny test and demo models
  train to the same numbers whether the CPU has bf16 units or not;
- any other CPU: fp32. bf16 is emulated there and far slower (measured on an AMD EPYC without
  those units: 2 GFLOP/s in bf16 against 110 in fp32).

Training in bf16 is mixed precision (float32 master weights, bf16 autocast), so checkpoints stay
float32; sampling and scoring in bf16 cast the weights once. Every manifest records what ran.
"""

from __future__ import annotations

import functools

CHOICES = ("auto", "fp32", "bf16")
BF16_MIN_HIDDEN = 256  # the smallest hidden size for which `auto` picks bf16 on a CPU with bf16 units


def check(value: str, section: str) -> None:
    if value not in CHOICES:
        raise ValueError(f"{section}.precision must be one of {', '.join(CHOICES)}, not {value!r}")


@functools.lru_cache(maxsize=1)
def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def fast_bf16() -> bool:
    """Whether this machine's device multiplies bf16 matrices in hardware."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_units()


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> bool:
    """Whether this machine's CPU has bf16 matrix units (AMX or AVX-512 BF16)."""
    import torch

    probes = [getattr(torch.cpu, p, None) for p in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(fn is not None for fn in probes):  # torch's answer, where it gives one, is final
        return any(fn() for fn in probes if fn is not None)
    try:  # older torch: the CPU's own flags
        flags = open("/proc/cpuinfo").read().split()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        return False


def resolve(value: str, hidden_size: int | None = None) -> str:
    """'fp32' or 'bf16': what `value` means on this machine for a model of `hidden_size` (None: a
    model too large to name, e.g. SmolLM2's 576)."""
    check(value, "precision")
    if value != "auto":
        return value
    if not fast_bf16():
        return "fp32"
    if on_gpu() or hidden_size is None or hidden_size >= BF16_MIN_HIDDEN:
        return "bf16"
    return "fp32"


def hidden_size(model) -> int | None:
    """A model's width, as `resolve` takes it."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)


def dtype(value: str, model=None):
    """The torch dtype that `model`'s weights are cast to for sampling and scoring."""
    import torch

    return torch.bfloat16 if resolve(value, hidden_size(model)) == "bf16" else torch.float32
