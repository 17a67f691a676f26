"""Side-by-side speed benchmarks, measured in one run, printed as ratios.

    .venv/bin/python benchmarks/bench.py [--config configs/demo.yaml] [--steps 30] [--prompts 8]

1. Pretraining throughput (tokens/s), plain against annotated blocks, same model and step count.
   The steps alternate between the two so drift on a shared machine hits both alike.
2. Sampling cost (seconds per response token), anchored against plain, same model and prompts:
   anchored pays for its annotation tokens and the second generate() call; anchor-stratified
   sampling (sample.anchors: stratified) also draws a pool of annotations to choose from.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per variant")
    ap.add_argument("--prompts", type=int, default=8, help="prompts for the sampling benchmark")
    args = ap.parse_args()

    from datasets import load_from_disk
    from transformers import set_seed

    from anchorlm.annotate import annotate_corpus, read_annotated
    from anchorlm.config import SampleConfig, load_config
    from anchorlm.data.pack import pack
    from anchorlm.data.sft import INSTRUCTIONS
    from anchorlm.sample import sample
    from anchorlm.tokenizer import train_tokenizer
    from anchorlm.train.model import build_model, non_embedding_params
    from anchorlm.train.pretrain import collate_blocks

    cfg = load_config(
        args.config, [f"corpus.path={ROOT / 'data/corpus.jsonl.gz'}", "corpus.max_chars_per_category=20000"]
    )
    tmp = Path(tempfile.mkdtemp(prefix="anchorlm-bench-"))
    annotate_corpus(cfg.corpus, cfg.annotate, tmp / "ann")
    docs = read_annotated(tmp / "ann")
    tok = train_tokenizer(docs, cfg.tokenizer, tmp / "tok")
    p = cfg.pretrain
    for v in ("plain", "annotated"):
        pack(docs, tok, v == "annotated", p.seq_len, tmp / v, p.seed)
    data = {v: load_from_disk(str(tmp / v)) for v in ("plain", "annotated")}

    set_seed(0)
    model = build_model(p.model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    elapsed = {"plain": 0.0, "annotated": 0.0}
    for step in range(args.steps + 2):
        for v in ("plain", "annotated"):
            ds = data[v]
            rows = [ds[(step * p.batch_size + i) % len(ds)] for i in range(p.batch_size)]
            batch = collate_blocks(rows)
            t = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step >= 2:  # two warm-up steps
                elapsed[v] += time.perf_counter() - t
    tokens = args.steps * p.batch_size * p.seq_len
    tps = {v: tokens / elapsed[v] for v in elapsed}
    print(
        f"model: {non_embedding_params(model):,} non-embedding parameters, "
        f"seq_len {p.seq_len}, batch {p.batch_size}, {args.steps} steps per variant"
    )
    print(
        f"pretraining throughput  plain {tps['plain']:,.0f} tok/s   annotated {tps['annotated']:,.0f} tok/s"
        f"   ratio annotated/plain = {tps['annotated'] / tps['plain']:.3f}"
    )

    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    prompts = [{"id": i, "prompt": q} for i, q in enumerate(INSTRUCTIONS[: args.prompts])]
    sc = SampleConfig(**{**cfg.sample.__dict__, "seeds": [0], "n_samples": 8})
    cost = {}
    modes = {
        "plain": (False, sc),
        "anchored": (True, sc),
        "stratified": (True, replace(sc, anchors="stratified")),
    }
    for _ in range(2):  # the first pass warms up; the second is timed
        for name, (anchored, c) in modes.items():
            t = time.perf_counter()
            rows = sample(c, tmp / "model", prompts, tmp / f"{name}.jsonl", anchored)
            cost[name] = (time.perf_counter() - t) / max(sum(r["n_tokens"] for r in rows), 1)
    print(
        f"sampling cost  plain {cost['plain'] * 1e3:.3f} ms/response token   anchored "
        f"{cost['anchored'] * 1e3:.3f} ms/response token   ratio anchored/plain = "
        f"{cost['anchored'] / cost['plain']:.3f}"
    )
    print(
        f"anchor-stratified (pool of {sc.anchor_pool} annotations per sample) "
        f"{cost['stratified'] * 1e3:.3f} ms/response token   ratio stratified/anchored = "
        f"{cost['stratified'] / cost['anchored']:.3f}"
    )


if __name__ == "__main__":
    main()
