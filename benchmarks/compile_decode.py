"""Does `torch.compile` pay for SmolLM2's decode step on this CPU? Measured side by side in one run.

    .venv/bin/python benchmarks/compile_decode.py > docs/benchmarks-compile.json   # about 2 minutes

The engine's cache (anchorlm/kvcache.py) hands attention only the columns written so far, a length
that grows every step; torch 2.13's inductor fails on that (a generated kernel names an undefined
size `s0`). What compiles is transformers' own static cache: attention over the whole
preallocation, masked, the same shapes every step. This script decodes with that cache, eager and
compiled (`torch.compile(dynamic=False)`, inductor's default mode), at batch 32 in the precision
`auto` picks here, and reports tokens/s of the steps after a warm-up (the median of 3 runs each,
interleaved), the first compiled decode's wall time (compiling, prefill and all its steps; shorter
where inductor's on-disk cache holds the graph from an earlier run), and where the compiled steps'
time goes (the profiler's operators over the timed steps, their shares of its self time). The
eager side is transformers' step over the static cache, not the engine's (whose figures are in
docs/benchmarks.json).
Greedy draws, no sampling: only the forward is compared.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import StaticCache

from anchorlm.data.sft import INSTRUCTIONS
from anchorlm.format import encode_prompt
from anchorlm.models import load_model
from anchorlm.precision import dtype
from anchorlm.provenance import provenance

BATCH, NEW, WARM = 32, 48, 8


def left_padded(tok, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts left-padded to one width: ids and the mask of their real tokens."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    real = torch.zeros_like(ids)
    for i, q in enumerate(seqs):
        ids[i, width - len(q) :], real[i, width - len(q) :] = torch.tensor(q), 1
    return ids, real


def greedy_decode(model, fn, ids, real, cache, eos_id: int, steps: int = NEW, timed_from: int = WARM,
                  columns=None, prof=None) -> tuple[float, torch.Tensor]:  # fmt: skip
    """Prefill `ids` into `cache`, then `steps` greedy steps of `fn(next, mask, positions, cache,
    cache_position)`: tokens/s of steps timed_from..steps and the tokens drawn. `columns(s)`, where
    given, says how many of the mask's columns step s hands `fn` (default: all of them); with
    `prof`, a profiler started at timed_from and stopped after the last step."""
    if not 0 <= timed_from < steps:
        raise ValueError(f"timed_from ({timed_from}) must be a step: 0 <= timed_from < steps ({steps})")
    batch, width = ids.shape
    mask = torch.zeros(batch, width + steps, dtype=torch.long)
    mask[:, :width] = real
    drawn = []
    with torch.no_grad():
        model(input_ids=ids, attention_mask=real, position_ids=(real.cumsum(-1) - 1).clamp(min=0),
              past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
        nxt, pos = torch.full((batch, 1), eos_id), real.sum(-1, keepdim=True)
        for s in range(steps):
            if s == timed_from:
                t = time.perf_counter()
                if prof is not None:
                    prof.start()
            mask[:, width + s] = 1
            cols = columns(s) if columns else mask.shape[1]
            nxt = fn(nxt, mask[:, :cols], pos, cache, torch.tensor([width + s])).argmax(-1, keepdim=True)
            drawn.append(nxt)
            pos = pos + 1
    if prof is not None:
        prof.stop()
    return batch * (steps - timed_from) / (time.perf_counter() - t), torch.cat(drawn, 1)


def main() -> None:
    model, tok = load_model("smollm2", tokens="turns")
    model.to(dtype("auto", model))
    qs = [encode_prompt(tok, q) for q in INSTRUCTIONS[:4]]
    ids, real = left_padded(tok, [qs[i % 4] for i in range(BATCH)])

    def step(nxt, mask, pos, cache, at):
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1, cache_position=at)  # fmt: skip
        return out.logits[:, -1]

    def decode(fn, prof=None) -> float:
        """Tokens/s of one greedy decode over a fresh static cache (with `prof`, profiled)."""
        torch.manual_seed(0)
        cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + NEW)
        return greedy_decode(model, fn, ids, real, cache, tok.eos_token_id, prof=prof)[0]

    compiled = torch.compile(step, dynamic=False)
    t = time.perf_counter()
    decode(compiled)  # compiles (every decode has the same shapes: no recompiling after)
    first_call_s = time.perf_counter() - t
    decode(step)  # warm-up
    runs = {"eager": [], "compiled": []}
    for _ in range(3):
        runs["eager"].append(decode(step))
        runs["compiled"].append(decode(compiled))
    prof = profile(activities=[ProfilerActivity.CPU])
    decode(compiled, prof=prof)  # the timed steps only
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({
        "provenance": provenance(),
        "batch": BATCH,
        "precision": str(next(model.parameters()).dtype),
        "eager_tokens_per_s": round(med["eager"], 1),
        "compiled_tokens_per_s": round(med["compiled"], 1),
        "compiled_over_eager": round(med["compiled"] / med["eager"], 3),
        "first_compiled_decode_seconds": round(first_call_s, 1),  # compiling, prefill and 48 steps
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "compiled_step_top_operators": {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:5]},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
