"""Does `torch.compile` pay for SmolLM2's decode step when attention reads the cache in buckets?
Measured side by side in one run:

    .venv/bin/python benchmarks/compile_buckets.py > docs/benchmarks-compile-buckets.json   # about 15 minutes

`benchmarks/compile_decode.py` compiles transformers' static cache, whose attention reads the whole
preallocation every step (inductor fails on the engine's cache, whose length grows every step).
Here attention reads the columns written so far rounded up to a multiple of `BUCKET` (16): the
shapes change only every 16 steps, so inductor compiles one graph per bucket and batch
(`dynamic=False`; more than dynamo's limit of recompiles fails the run instead of running eager),
and attention pays for at most 15 columns more than the engine's. At batch 32 and 96, in the
precision `auto` picks, greedy decoding of 48 new tokens after a prefill, tokens/s of the steps
after a warm-up of 8 (the median of 3 interleaved rounds) of:

- `engine`: the engine's eager step as `anchorlm sample` runs it (the cache of anchorlm/kvcache.py,
  every linear weight prepacked: anchorlm/prepack.py);
- `eager`: the same, the products as transformers makes them;
- `compiled`: the bucketed cache under `torch.compile`, the products as transformers makes them
  (inductor cannot lower the prepacked products, and with inductor's own weight freezing the
  compiled kernel fails at run time: index out of bounds, torch 2.13).

Also: the first compiled decode's wall time (one graph per bucket; less where inductor's on-disk
cache holds graphs from an earlier run), the number of graphs compiled in the run, and the share of
the greedy tokens the compiled decode draws as the eager one does (compiled kernels round
differently).
"""

from __future__ import annotations

import json
import math
import statistics
import time

import torch
from compile_decode import NEW, greedy_decode, left_padded
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from anchorlm.data.sft import INSTRUCTIONS
from anchorlm.format import encode_prompt
from anchorlm.kvcache import preallocated
from anchorlm.models import load_model
from anchorlm.precision import dtype
from anchorlm.prepack import prepack
from anchorlm.provenance import provenance

BATCHES, BUCKET, ROUNDS = (32, 96), 16, 3  # 48 new tokens, timed after 8: compile_decode's


class Bucketed(StaticLayer):
    """transformers' static layer, its attention handed the first `bucket` columns."""

    bucket = 0

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        return keys[:, :, : self.bucket], values[:, :, : self.bucket]

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.bucket, 0


def main() -> None:
    model, tok = load_model("smollm2", tokens="turns")
    model.to(dtype("auto", model))
    qs = [encode_prompt(tok, q) for q in INSTRUCTIONS[:4]]

    def step(nxt, mask, pos, cache, at):  # the engine's call: no cache_position (`at` unused)
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)  # fmt: skip
        return out.logits[:, -1]

    # a graph per bucket and batch; never fall back to eager quietly when they outnumber dynamo's limit
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    compiled = torch.compile(step, dynamic=False)
    out = {"provenance": provenance(), "precision": str(next(model.parameters()).dtype), "bucket": BUCKET}
    for batch in BATCHES:
        out[f"batch_{batch}"] = measure(model, tok, step, compiled, [qs[i % 4] for i in range(batch)])
    out["graphs_compiled"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    print(json.dumps(out, indent=1))


def measure(model, tok, step, compiled, seqs: list[list[int]]) -> dict:
    """The three decodes of the module docstring at len(seqs) rows, interleaved."""
    ids, real = left_padded(tok, seqs)
    batch, width = ids.shape
    length = width + NEW

    def decode(fn, bucketed: bool) -> tuple[float, torch.Tensor]:
        """Tokens/s of steps WARM..NEW of one greedy decode, and the tokens drawn."""
        if not bucketed:  # the engine's cache: attention over the columns written
            cache = preallocated(model, length)
            return greedy_decode(
                model, fn, ids, real, cache, tok.eos_token_id, columns=lambda s: width + s + 1
            )
        cache = StaticCache(config=model.config, max_cache_len=length)
        for layer in cache.layers:
            layer.__class__, layer.bucket = Bucketed, width

        def columns(s: int) -> int:  # the written columns rounded up to a bucket
            cols = min(length, math.ceil((width + s + 1) / BUCKET) * BUCKET)
            for layer in cache.layers:
                layer.bucket = cols
            return cols

        return greedy_decode(model, fn, ids, real, cache, tok.eos_token_id, columns=columns)

    t = time.perf_counter()
    _, by_compiled = decode(compiled, True)
    first = time.perf_counter() - t
    _, by_eager = decode(step, False)
    runs: dict[str, list[float]] = {"engine": [], "eager": [], "compiled": []}
    for _ in range(ROUNDS):
        runs["eager"].append(decode(step, False)[0])
        runs["compiled"].append(decode(compiled, True)[0])
        _, undo = prepack(model, batch)
        runs["engine"].append(decode(step, False)[0])
        undo()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "compiled_over_engine": round(med["compiled"] / med["engine"], 3),
        "compiled_over_eager": round(med["compiled"] / med["eager"], 3),
        "first_compiled_decode_seconds": round(first, 1),
        "greedy_tokens_as_eager": round(float((by_compiled == by_eager).float().mean()), 3),
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }


if __name__ == "__main__":
    main()
