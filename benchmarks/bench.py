"""Speed, measured side by side in one run: how close anchorlm gets to what this machine can do.

    .venv/bin/python benchmarks/bench.py            # about 6 minutes on 2 CPU cores

1. The machine's matrix-product peak (GFLOP/s) in fp32 and bf16, at the widths the models use.
2. Training throughput (forward, backward, AdamW step) in fp32 and bf16, for the tiny demo model (tiny.yaml), the
   CPU study's largest model and SmolLM2-135M (full and LoRA), as tokens/s, effective GFLOP/s and
   the fraction of the same run's peak in that precision. On a machine without bf16 units, bf16
   SmolLM2 is timed at a small batch (its peak says why; `auto` picks fp32 there).
3. Annotated against plain pretraining throughput (same model, alternating steps).
4. Sampling cost per generated token (annotation tokens counted) and per response token: anchored
   against plain, anchor guidance against anchored, anchor-stratified against anchored.
5. SmolLM2-135M sampling at batch 32: anchorlm's engine against transformers' `generate`.

Writes docs/benchmarks.json and docs/benchmarks.md (generated; never edit them by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

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


def train_speed(model, batch: int, seq_len: int, precision: str, steps: int, vocab: int) -> dict:
    """Tokens/s of forward + backward + AdamW step, as the Trainer runs them (bf16: autocast)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, vocab, (batch, seq_len))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = _timed(step, 0, min_calls=steps)
    return {"batch": batch, "seq_len": seq_len, "tokens_per_s": round(batch * seq_len / sec, 1)}


def _with_gflops(r: dict, fpt: float, peak: float) -> dict:
    g = r["tokens_per_s"] * fpt / 1e9
    return {**r, "gflops": round(g, 1), "fraction_of_peak": round(g / peak, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where benchmarks.json/.md go")
    ap.add_argument("--prompts", type=int, default=8, help="prompts for the sampling benchmark")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    from anchorlm.precision import fast_bf16, resolve

    res: dict = {"machine": machine(), "fast_bf16": fast_bf16(), "auto_precision": resolve("auto")}
    log = Log()
    res["peak_gflops"] = pk = peaks()
    log(f"matrix-product peak: fp32 {pk['fp32']:.0f} GFLOP/s, bf16 {pk['bf16']:.0f} GFLOP/s")

    tmp = Path(tempfile.mkdtemp(prefix="anchorlm-bench-"))
    tok, data, cfg = _demo_data(tmp)
    res["training"] = _training(tok, cfg, pk, log)
    res["annotated_over_plain"] = _annotated_over_plain(tok, data, cfg, log)
    res["sampling"] = _sampling(tok, cfg, tmp, args.prompts, log)
    res.update(
        {k: res["sampling"].pop(k) for k in list(res["sampling"]) if k.endswith(("_token", "_over_anchored"))}
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "benchmarks.md").write_text(markdown(res))
    print(f"\nwrote {out / 'benchmarks.json'} and {out / 'benchmarks.md'}")


class Log:
    def __call__(self, msg: str) -> None:
        print(msg, flush=True)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in _cpuinfo() if ln.startswith("flags")), [])
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _demo_data(tmp: Path):
    from datasets import load_from_disk

    from anchorlm.annotate import annotate_corpus
    from anchorlm.config import load_config
    from anchorlm.data.annotated import read_annotated
    from anchorlm.data.pack import pack
    from anchorlm.tokenizer import train_tokenizer

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
    from transformers import set_seed

    from anchorlm.config import ModelConfig
    from anchorlm.models import load_model
    from anchorlm.study.config import load_study_config
    from anchorlm.train.model import build_model

    study = load_study_config(ROOT / "anchorlm/configs/reproduce.yaml")
    largest = max(study.sizes, key=lambda s: s["hidden_size"])
    tiny = {
        "tiny": cfg.pretrain.model,
        f"study_{largest['name']}": ModelConfig(**{k: v for k, v in largest.items() if k != "name"}),
    }
    from anchorlm.precision import fast_bf16

    out: dict = {}
    for name, mc in tiny.items():
        set_seed(0)
        model = build_model(mc, tok)
        fpt = flops_per_token(model, cfg.pretrain.seq_len)
        out[name] = {}
        for prec in ("fp32", "bf16"):
            steps = 2 if prec == "bf16" and not fast_bf16() else 6  # emulated bf16 is slow
            r = train_speed(model, cfg.pretrain.batch_size, cfg.pretrain.seq_len, prec, steps, len(tok))
            out[name][prec] = _with_gflops(r, fpt, pk[prec])
            log(
                f"training {name:9s} {prec}  {r['tokens_per_s']:8,.0f} tok/s  {out[name][prec]['fraction_of_peak']:.2f} of peak"
            )
    from anchorlm.precision import fast_bf16

    for name, lora in (("smollm2", False), ("smollm2_lora", True)):
        model, stok = load_model("smollm2")
        if lora:
            from anchorlm.train.lora import apply_lora

            model = apply_lora(model, stok, rank=16)
        fpt = flops_per_token(model.get_base_model() if lora else model, 256)
        if lora:  # no weight gradients for the frozen matrices: 4 of the 6 FLOPs per weight
            fpt -= 2 * (sum(p.numel() for p in model.parameters() if not p.requires_grad))
        out[name] = {}
        for prec in ("fp32", "bf16") if not lora else ("fp32",):
            slow = prec == "bf16" and not fast_bf16()
            batch, seq = (1, 64) if slow else (4, 256)
            r = train_speed(model, batch, seq, prec, 1 if slow else 2, len(stok))
            out[name][prec] = _with_gflops(r, fpt, pk[prec])
            log(
                f"training {name:9s} {prec}  {r['tokens_per_s']:8,.0f} tok/s  {out[name][prec]['fraction_of_peak']:.2f} of peak (batch {batch}x{seq})"
            )
        del model
    return out


def _annotated_over_plain(tok, data, cfg, log, steps: int = 20) -> float:
    from transformers import set_seed

    from anchorlm.train.model import build_model
    from anchorlm.train.pretrain import collate_blocks

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
    """Costs of each way of sampling, on the tiny demo model's shape (random weights: the annotation is
    never closed, so every anchored sample draws all its annotation tokens and the lengths are the
    same in every mode)."""
    from dataclasses import replace

    from transformers import set_seed

    from anchorlm.config import SampleConfig
    from anchorlm.data.sft import INSTRUCTIONS
    from anchorlm.sample import sample
    from anchorlm.train.model import build_model

    set_seed(0)
    build_model(cfg.pretrain.model, tok).save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    prompts = [{"id": i, "prompt": q} for i, q in enumerate(INSTRUCTIONS[:n_prompts])]
    sc = SampleConfig(**{**cfg.sample.__dict__, "seeds": [0], "n_samples": 16, "batch_size": 64})
    modes = {
        "plain": (False, sc),
        "anchored": (True, sc),
        "guided": (True, replace(sc, guidance_scale=1.5)),
        "stratified": (True, replace(sc, anchors="stratified")),
    }
    sec, gen, resp = {}, {}, {}
    for _ in range(2):  # the first pass warms up; the second is timed
        for name, (anchored, c) in modes.items():
            t = time.perf_counter()
            rows = sample(c, tmp / "model", prompts, tmp / f"{name}.jsonl", anchored)
            sec[name] = time.perf_counter() - t
            resp[name] = sum(r["n_tokens"] for r in rows)
            pool = c.anchor_pool if c.anchors == "stratified" else 1
            gen[name] = resp[name] + pool * sum(r.get("annotation_tokens", 0) for r in rows)
    per_gen = {k: sec[k] / gen[k] for k in sec}
    per_resp = {k: sec[k] / resp[k] for k in sec}
    out = {
        "tiny_ms_per_generated_token": {k: round(v * 1e3, 4) for k, v in per_gen.items()},
        "tiny_ms_per_response_token": {k: round(v * 1e3, 4) for k, v in per_resp.items()},
        "anchored_over_plain_per_generated_token": round(per_gen["anchored"] / per_gen["plain"], 3),
        "anchored_over_plain_per_response_token": round(per_resp["anchored"] / per_resp["plain"], 3),
        "guided_over_anchored_per_generated_token": round(per_gen["guided"] / per_gen["anchored"], 3),
        "stratified_over_anchored": round(sec["stratified"] / sec["anchored"], 3),
    }
    for k in list(out)[2:]:
        log(f"sampling {k} {out[k]}")
    out["smollm2"] = _smollm2_sampling(log)
    return out


def _smollm2_sampling(log, batch: int = 32, new: int = 64) -> dict:
    """New tokens/s at batch 32 (4 prompts x 8 samples, `new` tokens each, no stop token)."""
    from anchorlm.data.sft import INSTRUCTIONS
    from anchorlm.engine import Settings, generate, row_key
    from anchorlm.format import encode_prompt
    from anchorlm.models import load_model

    model, tok = load_model("smollm2", tokens="turns")
    qs = [encode_prompt(tok, q) for q in INSTRUCTIONS[:4]]
    seqs = [qs[i % 4] for i in range(batch)]
    s = Settings(temperature=1.0, max_new_tokens=new, stop=())
    t = time.perf_counter()
    generate(model, seqs, [row_key(i) for i in range(batch)], s, tok.pad_token_id)
    ours = batch * new / (time.perf_counter() - t)
    n = max(map(len, seqs))
    ids = torch.full((batch, n), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, q in enumerate(seqs):
        ids[i, n - len(q) :], mask[i, n - len(q) :] = torch.tensor(q), 1
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                       do_sample=True, top_k=0, pad_token_id=tok.pad_token_id)  # fmt: skip
    hf = batch * new / (time.perf_counter() - t)
    log(f"SmolLM2 sampling at batch {batch}: engine {ours:.0f} tok/s, transformers generate {hf:.0f} tok/s")
    return {
        "batch": batch,
        "tokens_per_s": round(ours, 1),
        "transformers_generate_tokens_per_s": round(hf, 1),
    }


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `benchmarks/bench.py` (do not edit). Machine: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}, bf16 units: {', '.join(m['bf16_flags']) or 'none'}; `precision: auto` "
        f"runs **{r['auto_precision']}** here.",
        "",
        f"Matrix-product peak: fp32 **{r['peak_gflops']['fp32']:.0f}** GFLOP/s, bf16 "
        f"**{r['peak_gflops']['bf16']:.0f}** GFLOP/s.",
        "",
        "| training | precision | batch | tokens/s | GFLOP/s | fraction of peak |",
        "|---|---|---|---:|---:|---:|",
    ]
    for model, by in r["training"].items():
        for prec, x in by.items():
            lines.append(
                f"| {model} | {prec} | {x['batch']}x{x['seq_len']} | {x['tokens_per_s']:,.1f} | "
                f"{x['gflops']:.1f} | {x['fraction_of_peak']:.2f} |"
            )
    s = r["sampling"]
    lines += [
        "",
        "| ratio | value |",
        "|---|---:|",
        f"| annotated / plain pretraining throughput | {r['annotated_over_plain']:.3f} |",
        f"| anchored / plain sampling, per generated token | {r['anchored_over_plain_per_generated_token']:.3f} |",
        f"| anchored / plain sampling, per response token | {r['anchored_over_plain_per_response_token']:.3f} |",
        f"| guided (g = 1.5) / anchored, per generated token | {r['guided_over_anchored_per_generated_token']:.3f} |",
        f"| anchor-stratified / anchored, whole run | {r['stratified_over_anchored']:.3f} |",
        "",
        f"SmolLM2-135M sampling at batch {s['smollm2']['batch']}: **{s['smollm2']['tokens_per_s']:.0f}** new "
        f"tokens/s (transformers `generate`: {s['smollm2']['transformers_generate_tokens_per_s']:.0f}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
