"""Prepacked weights for sampling on a CPU: the products without re-laying out each weight.

A bf16 `nn.Linear` on a CPU multiplies through oneDNN, which copies the weight into its blocked
layout on every call. In a decode step the rows are few (the batch) and every weight is used once,
so that copy is a large share of the product: measured on an AMD EPYC with AVX-512 BF16 (2 cores),
SmolLM2's 1536 x 576 products over 300 distinct weights ran at 310 GFLOP/s prepacked against 224-236
as they come at 32 rows, 394-403 against 334-344 at 96 (a side run). `prepack` lays every linear
weight out once (`torch.ops.mkldnn._reorder_linear_weight`, what inductor's freezing pass does) and
multiplies with `torch.ops.mkldnn._linear_pointwise`. An fp32 `nn.Linear` multiplies through MKL;
oneDNN's laid-out fp32 product is faster on thin products (SmolLM2's output head at 32 rows: 177
against 76 GFLOP/s; its 1536 x 576 products 207 against 144; with both libraries held to AVX2, 140
against 73 and 187 against 138; a side run) but sums in another order. It pays on large weights only: measured alone at 4 to 96
rows, oneDNN's laid-out product took 0.3-0.4x MKL's speed on a 64 x 64 weight, 0.7-1.2x on 256 x 256
and 192 x 576, and 1.1-2.2x on every weight of 384 x 384 and more (a side run); so fp32 weights of
fewer than `FP32_MIN_WEIGHT` elements are left to MKL (a tiny model's layers: packing them all ran
its decode at 0.7x).

bf16: what is drawn does not change. The first time a product of a given shape is met in the
process (dtype, weight shape, bias or none, the layout's row count, the input's shape, the number
of threads), the packed product is compared with `F.linear`'s on a seeded random input of that
shape (so the verdict depends on the shape alone, never on what was sampled before), bit for bit, and products of that
shape use the packed weight only if they are equal: a kernel's summation order depends on those,
not on the values or on which layer holds the weight, so SmolLM2's 211 layers (5 weight shapes) are
checked 5 times at each input shape they meet.

fp32: the packed product is oneDNN's, not MKL's, and the same check asks it to be within
`FP32_TOLERANCE` of MKL's (relative to the largest output; they differ by about 1e-6), which a wrong
layout or kernel fails by orders of magnitude. So an fp32 sample is the same for the same seed,
model, batch and machine, but may differ from one drawn through `F.linear` (transformers'
`generate`) where two tokens' probabilities are within rounding of each other. `prepack(model,
fp32=False)` leaves fp32 products to MKL (the samples of anchorlm before fp32 packing).

A layer whose product fails its check on `batch` probe rows is not packed. A layer goes back to
`F.linear` when its weight or bias is replaced (`model.float()`, a new parameter, `.data =`), changed
in place through the parameter (an optimiser step), or when a call needs a gradient. A change
written through `.data` in place (peft's `merge`) is not seen: merge adapters before packing
(anchorlm saves its models merged). The packed copies cost the linear weights' memory once more
(270 MB for SmolLM2-135M in bf16, 510 MB for its 151 large weights in fp32) until `undo`; a weight
replaced after packing is kept alive by its packed layer until `undo` (so that no new weight can
take its address and pass for it).
"""

from __future__ import annotations

import types
from collections.abc import Callable

_AGREES: dict[tuple, bool] = {}  # a product's shape -> whether packed agrees with F.linear's there
FP32_TOLERANCE = 1e-4  # fp32: the largest difference from F.linear's, relative to its largest output
FP32_MIN_WEIGHT = 131_072  # fp32: weights of fewer elements are left to MKL (faster there)


def supported(model, fp32: bool = True) -> bool:
    """Whether `model`'s products can be prepacked: on a CPU with oneDNN, bf16 weights where it
    multiplies bf16, fp32 weights unless `fp32` is False."""
    import torch

    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if p.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return fp32 and p.dtype == torch.float32


def prepack(model, batch: int = 32, fp32: bool = True) -> tuple[int, Callable[[], None]]:
    """Multiply every `nn.Linear` of `model` on the CPU in the model's dtype (bf16; or fp32 unless
    `fp32` is False, weights of FP32_MIN_WEIGHT elements or more) with a prepacked copy of its
    weight (laid out for `batch` rows). Returns how many
    layers were packed (0 where `supported` says no) and an `undo` that gives each of them back its
    own forward and frees the copies."""
    import torch

    if not supported(model, fp32):
        return 0, lambda: None
    dt = next(model.parameters()).dtype
    patched = []
    with torch.no_grad():
        for mod in model.modules():
            if (
                type(mod) is torch.nn.Linear
                and mod.weight.dtype == dt
                and mod.weight.device.type == "cpu"
                and (dt == torch.bfloat16 or mod.weight.numel() >= FP32_MIN_WEIGHT)
                and "forward" not in vars(mod)  # an instance forward of someone else's (a hook): left alone
            ):
                fwd = _packed_forward(mod, batch)
                if fwd is not None:
                    mod.forward = fwd
                    patched.append((mod, fwd))

    def undo() -> None:
        for mod, fwd in patched:
            if vars(mod).get("forward") is fwd:
                del vars(mod)["forward"]
        patched.clear()

    return len(patched), undo


def packed_product(x, packed, bias):
    """x times a weight laid out by `torch.ops.mkldnn._reorder_linear_weight`, plus `bias`."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _agrees(key: tuple, shape: tuple, packed, weight, bias) -> bool:
    """Whether products of shape `key` agree with F.linear's packed (bf16: bit for bit; fp32:
    within FP32_TOLERANCE of the largest output, both finite): compared once, on a seeded random
    input of `shape` (an input without rows agrees: nothing to multiply)."""
    import math

    import torch
    import torch.nn.functional as F

    if key not in _AGREES:
        if math.prod(shape) == 0:
            return True
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(shape, generator=gen).to(weight.dtype)
        got, want = packed_product(probe, packed, bias), F.linear(probe, weight, bias)
        if weight.dtype == torch.bfloat16:
            _AGREES[key] = torch.equal(got, want)
        else:
            finite = bool(torch.isfinite(got).all() and torch.isfinite(want).all())
            gap = (got - want).abs().max().item()
            _AGREES[key] = finite and gap <= FP32_TOLERANCE * want.abs().max().item()
    return _AGREES[key]


def _packed_forward(mod, batch: int):
    """`mod`'s forward over a prepacked weight (a method bound to `mod`, so a deep copy of the
    module binds the copy, whose own weight then sends it back to `F.linear`), or None when the
    product fails its check on `batch` probe rows or cannot be packed."""
    import torch
    import torch.nn.functional as F

    weight, bias = mod.weight, mod.bias
    dt = weight.dtype
    shape = (*weight.shape, dt, bias is not None, batch)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch)
        rows = (batch, weight.shape[1])  # the probe's shape
        if not _agrees((*shape, rows, torch.get_num_threads()), rows, packed, weight, bias):
            return None
    except RuntimeError:
        return None
    held = weight.detach()  # the weight's storage, kept by the closure: no later weight can take its address
    version = weight._version

    def forward(self, x):
        fresh = (
            self.weight is weight
            and self.bias is bias
            and weight.data_ptr() == held.data_ptr()
            and weight._version == version
            and x.dtype == dt
            and x.device.type == "cpu"
        )
        wants_grad = torch.is_grad_enabled() and (
            weight.requires_grad or x.requires_grad or (bias is not None and bias.requires_grad)
        )
        if not fresh or wants_grad:
            return F.linear(x, self.weight, self.bias)
        key = (*shape, tuple(x.shape), torch.get_num_threads())
        if _agrees(key, tuple(x.shape), packed, weight, bias):  # compared the first time this shape is met
            return packed_product(x, packed, bias)
        return F.linear(x, weight, bias)

    return types.MethodType(forward, mod)
