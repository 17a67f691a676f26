"""Where a SmolLM2-135M training step's time goes, against what its matrix products alone reach.

    .venv/bin/python benchmarks/training_profile.py [--out FILE]     # about 3 minutes on 2 CPU cores

For each precision (fp32; bf16 where the CPU has bf16 units), in one run: the matrix-product peak
(`bench.peaks`), a full training step as `bench.py` times it (batch 8 x 256, forward, backward and
a fused AdamW step; bf16 under autocast over float32 weights, as the Trainer runs it) and its
fraction of that peak; the step's time by kind of operation (torch.profiler, self time); and the
step's matrix products alone (every linear layer's forward, input-gradient and weight-gradient
product at the step's shapes, each timed apart, as often as the step runs it) as a fraction of the
peak and of the step's time: what the step could reach if nothing but its products cost anything.
With --compile, also the same step with the model under `torch.compile` (inductor: the
elementwise work fused), timed against the eager step in alternating rounds after compiling.
Prints JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

import torch
from bench import _timed, _train_step, flops_per_token, machine, peaks
from torch.profiler import ProfilerActivity, profile

from anchorlm.models import load_model
from anchorlm.precision import fast_bf16
from anchorlm.provenance import code_version

B, T = 8, 256
KINDS = {  # profiler op -> kind of work (self time); everything else is "other"
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise"),
    "attention (forward and backward)": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    ),
    "casts and copies": ("aten::_to_copy", "aten::copy_"),
    "loss (log-softmax and NLL, forward and backward)": (
        "aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward", "aten::nll_loss_backward",
    ),
    "optimizer (fused AdamW)": ("aten::_fused_adamw_",),
    "fill (zeroing)": ("aten::fill_", "aten::zero_"),
}  # fmt: skip


def products_alone(model, dt) -> tuple[float, float]:
    """(FLOPs, seconds) of the step's linear-layer products at its shapes, each shape timed apart."""
    shapes: collections.Counter = collections.Counter()
    rows = B * T
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            i, o = m.in_features, m.out_features
            shapes[(rows, i, o)] += 1  # forward: x W^T
            shapes[(rows, o, i)] += 1  # gradient of the input: dy W
            shapes[(o, rows, i)] += 1  # gradient of the weight: dy^T x
    flops = secs = 0.0
    for (m, k, n), count in shapes.items():
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        flops += count * 2 * m * k * n
        secs += count * _timed(lambda a=a, b=b: a @ b, 0.3)
    return flops, secs


def one(prec: str, peak: float) -> dict:
    model, tok = load_model("smollm2")
    step = _train_step(model, B, T, prec, len(tok))
    step()
    step()
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        step()
        runs.append((time.perf_counter() - t) / 2)
    sec = statistics.median(runs)
    fpt = flops_per_token(model, T)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        step()
    events = p.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share: collections.Counter = collections.Counter()
    for e in events:
        share[next((k for k, ops in KINDS.items() if e.key in ops), "other")] += e.self_cpu_time_total
    flops, alone = products_alone(model, torch.bfloat16 if prec == "bf16" else torch.float32)
    return {
        "step_s": round(sec, 3),
        "tokens_per_s": round(B * T / sec, 1),
        "fraction_of_peak": round(B * T * fpt / sec / 1e9 / peak, 3),
        "profile": {k: round(v / total, 3) for k, v in share.most_common()},
        "products_alone_fraction_of_peak": round(flops / alone / 1e9 / peak, 3),
        "products_alone_s": round(alone, 3),
        "products_alone_share_of_step": round(alone / sec, 3),
    }


def compiled_against_eager(prec: str, peak: float, rounds: int = 4) -> dict:
    """The step under torch.compile against the eager step, alternating which goes first: the
    compile time, each one's median step time and fraction of the peak, and their ratio."""
    model, tok = load_model("smollm2")
    eager = _train_step(model, B, T, prec, len(tok))
    compiled = _train_step(torch.compile(model), B, T, prec, len(tok))
    t = time.perf_counter()
    compiled()
    first = time.perf_counter() - t
    compiled()
    eager()
    secs: dict = {"eager": [], "compiled": []}
    for r in range(rounds):
        for name, fn in (("eager", eager), ("compiled", compiled)) if r % 2 else (("compiled", compiled), ("eager", eager)):
            t = time.perf_counter()
            fn()
            secs[name].append(time.perf_counter() - t)
    fpt = flops_per_token(model, T)
    med = {k: statistics.median(v) for k, v in secs.items()}
    return {
        "compile_and_first_step_s": round(first, 1),
        **{f"{k}_step_s": [round(x, 3) for x in v] for k, v in secs.items()},
        **{f"{k}_fraction_of_peak": round(B * T * fpt / m / 1e9 / peak, 3) for k, m in med.items()},
        "compiled_over_eager_speed": round(med["eager"] / med["compiled"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    ap.add_argument("--precisions", default="", help="comma-separated (default: fp32, and bf16 where fast)")
    args = ap.parse_args()
    pk = peaks()
    out = {"machine": machine(), "code": code_version(), "batch": [B, T], "peak_gflops": pk, "by_precision": {}}
    precs = args.precisions.split(",") if args.precisions else ("fp32", "bf16") if fast_bf16() else ("fp32",)
    for prec in precs:
        out["by_precision"][prec] = one(prec, pk[prec])
        if args.compile:
            out["by_precision"][prec]["compiled"] = compiled_against_eager(prec, pk[prec])
    out["peak_gflops_at_end"] = peaks()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
