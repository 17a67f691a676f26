"""Prepacked bf16 weights for sampling on a CPU: the same products, without re-laying out each weight.

A bf16 `nn.Linear` on a CPU multiplies through oneDNN, which copies the weight into its blocked
layout on every call. In a decode step the rows are few (the batch) and every weight is used once,
so that copy is a large share of the product: measured on an AMD EPYC with AVX-512 BF16 (2 cores),
SmolLM2's 1536 x 576 products over 300 distinct weights ran at 310 GFLOP/s prepacked against 224-236
as they come at 32 rows, 394-403 against 334-344 at 96. `prepack` lays every bf16 linear weight out
once (`torch.ops.mkldnn._reorder_linear_weight`, what inductor's freezing pass does) and multiplies
with `torch.ops.mkldnn._linear_pointwise`. fp32 has no such gain here (MKL's packed product ran
0.9x), so only bf16 is packed.

What is drawn does not change: each layer's packed product is compared with `F.linear`, bit for bit,
on probe rows before it is used, and a layer that differs is left as it is. A layer whose weight is
changed afterwards (an optimiser step, a new parameter) goes back to `F.linear` by itself, and so does any
call that needs a gradient. The packed copies cost the linear weights' memory once more (270 MB for
SmolLM2-135M in bf16) until `undo` is called.
"""

from __future__ import annotations

from collections.abc import Callable

PROBE_ROWS = (1, 7)  # besides the batch: one row, and an odd count that fills no block


def supported(model) -> bool:
    """Whether `model`'s products can be prepacked: bf16 weights on a CPU whose oneDNN multiplies bf16."""
    import torch

    p = next(model.parameters(), None)
    return (
        p is not None
        and p.device.type == "cpu"
        and p.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


def prepack(model, batch: int = 32) -> tuple[int, Callable[[], None]]:
    """Multiply every bf16 `nn.Linear` of `model` with a prepacked copy of its weight (laid out for
    `batch` rows). Returns how many layers were packed (0 where `supported` says no) and an `undo`
    that gives each layer back its own forward and frees the copies."""
    import torch

    if not supported(model):
        return 0, lambda: None
    patched = []
    with torch.no_grad():
        for mod in model.modules():
            if (
                type(mod) is torch.nn.Linear
                and mod.weight.dtype == torch.bfloat16
                and "forward" not in vars(mod)
            ):
                fwd = _packed_forward(mod, batch)
                if fwd is not None:
                    mod.forward = fwd
                    patched.append(mod)

    def undo() -> None:
        for mod in patched:
            vars(mod).pop("forward", None)
        patched.clear()

    return len(patched), undo


def _packed_forward(mod, batch: int):
    """`mod`'s forward over a prepacked weight, or None when its product differs from `F.linear` on
    the probe rows."""
    import torch
    import torch.nn.functional as F

    weight, bias = mod.weight, mod.bias
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch)
    version = weight._version
    gen = torch.Generator().manual_seed(0)
    for rows in (batch, *PROBE_ROWS):
        x = torch.randn(rows, weight.shape[1], generator=gen).to(torch.bfloat16)
        if not torch.equal(
            torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""), F.linear(x, weight, bias)
        ):
            return None

    def forward(x):
        stale = mod.weight is not weight or weight._version != version
        if stale or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)):
            return F.linear(x, mod.weight, mod.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward
