"""The whole path in one call: annotate -> tokenizer -> tokenize -> pretrain (plain, annotated)
-> SFT data -> post-train (sft, anchored) -> sample (base, sft, aat) -> evaluate -> report.

Each stage writes its own directory under `out_dir` and is skipped when its output is complete,
so an interrupted demo continues where it stopped (training resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from anchorlm.config import PipelineConfig, to_dict
from anchorlm.manifest import is_done

VARIANTS = {  # variant -> (model dir under models/, anchored sampling)
    "base": ("base", False),
    "sft": ("sft", False),
    "aat": ("aat", True),
}


# Stages whose outputs are reused on a rerun; `evaluate` always runs again, so it may change.
REUSED_SECTIONS = ("corpus", "annotate", "tokenizer", "pretrain", "sft_data", "posttrain", "sample")


def _check_same_config(out: Path, cfg: PipelineConfig) -> None:
    """Refuse to finish a run in `out` that was started with another config: its finished stages
    would be reused silently."""
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(to_dict(cfg)))
    changed = [k for k in REUSED_SECTIONS if old.get(k) != new.get(k)]
    if changed:
        raise ValueError(
            f"{out} holds a run made with another config (changed: {', '.join(changed)}); "
            "use a new --out or delete that directory"
        )


def _log(msg: str) -> None:
    print(f"[anchorlm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(cfg: PipelineConfig, out: Path) -> list[dict]:
    """The shared data stages (annotate, tokenizer, tokenize plain and annotated, SFT data), each
    skipped when complete; returns the annotated documents."""
    from anchorlm.annotate import annotate_corpus, read_annotated
    from anchorlm.data.pack import pack
    from anchorlm.data.sft import build_sft_data
    from anchorlm.tokenizer import load_tokenizer, train_tokenizer

    _log("annotate")
    annotate_corpus(cfg.corpus, cfg.annotate, out / "annotate")  # resumes; no-op when complete
    docs = read_annotated(out / "annotate")
    if not is_done(out / "tokenizer"):
        _log("train tokenizer")
        train_tokenizer(docs, cfg.tokenizer, out / "tokenizer")
    tok = load_tokenizer(out / "tokenizer")
    for variant in ("plain", "annotated"):
        if not is_done(out / "tokens" / variant):
            _log(f"tokenize ({variant})")
            pack(
                docs,
                tok,
                variant == "annotated",
                cfg.pretrain.seq_len,
                out / "tokens" / variant,
                cfg.pretrain.seed,
            )
    if not is_done(out / "sft_data"):
        _log("build SFT data")
        build_sft_data(cfg.corpus, cfg.annotate, out / "annotate", cfg.sft_data, out / "sft_data")
    return docs


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or finish) every stage; returns the results dict also written to out_dir/results.json."""
    from anchorlm.data.sft import read_jsonl
    from anchorlm.evaluate import evaluate
    from anchorlm.report import write_report
    from anchorlm.sample import sample
    from anchorlm.train.posttrain import posttrain
    from anchorlm.train.pretrain import pretrain

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(out, cfg)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    t0 = time.time()

    prepare(cfg, out)
    for variant, model in (("plain", "base"), ("annotated", "annotated")):
        if not is_done(out / "models" / model):
            _log(f"pretrain ({variant})")
            pretrain(cfg.pretrain, out / "tokens" / variant, out / "tokenizer", out / "models" / model)
    examples = read_jsonl(out / "sft_data" / "train.jsonl")
    prompts = read_jsonl(out / "sft_data" / "eval_prompts.jsonl")
    for method, init, name in (("sft", "base", "sft"), ("anchored", "annotated", "aat")):
        if not is_done(out / "models" / name):
            _log(f"post-train ({method})")
            pcfg = dataclasses.replace(cfg.posttrain, method=method)
            posttrain(pcfg, out / "models" / init, examples, out / "models" / name)
    samples = {}
    for variant, (model, anchored) in VARIANTS.items():
        samples[variant] = out / "samples" / f"{variant}.jsonl"
        if not samples[variant].exists():
            _log(f"sample ({variant})")
            sample(cfg.sample, out / "models" / model, prompts, samples[variant], anchored)
    _log("evaluate")
    results = evaluate(cfg.evaluate, cfg.sft_data, cfg.corpus, samples, out / "eval" / "metrics.json")
    minutes = round((time.time() - t0) / 60, 2)
    results["pipeline"] = {"minutes_this_invocation": minutes, "out_dir": str(out)}
    table = write_report(results, out, title=f"anchorlm demo ({out})")
    _log(f"done in {minutes} min; report: {out / 'report.md'}")
    print(table)
    return results
