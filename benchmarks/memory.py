"""Peak memory: annotation and tokenisation at 1x and 10x corpus size, or SmolLM2 training.

Without --training or --sampling: annotation and tokenisation, sharded against one file. With
--training (--sampling): SmolLM2 training (sampling) with glibc's allocator defaults against
`keep_freed_memory`.

    .venv/bin/python benchmarks/memory.py [--docs-per-shard 1000] [--shards 2]
    .venv/bin/python benchmarks/memory.py --training [--out docs/benchmarks-memory-training.json]
    .venv/bin/python benchmarks/memory.py --sampling [--out docs/benchmarks-memory-sampling.json]

1x is `--shards` shards of `--docs-per-shard` documents (drawn from the shuffled bundled corpus,
repeating it when 10x needs more), 10x is ten times as many shards of the same size; the one-file rows hold the same documents in one JSONL.
Each stage runs as its own `anchorlm` process, as a user runs it, and its peak resident memory
(ru_maxrss from wait4) is printed, with the 10x/1x ratio measured in the same run. The annotator
state is fitted on the first `annotate.fit_max_docs` documents (set here to the 1x size), which
bounds the one corpus-wide step too.

--training: SmolLM2 trained as benchmarks/bench.py times it (8 x 256 in the precision `auto` picks,
a warm-up step and 3 runs of 2 steps), each time in a fresh process: with glibc's allocator as it
comes (ANCHORLM_MALLOC=default) and after `keep_freed_memory` (anchorlm/allocator.py), as the
training loop runs. Each process's peak resident memory (ru_maxrss), tokens/s and page faults a
step, alternating the two (which goes first too) three times; the medians' ratios: what keeping freed memory costs in
memory and buys in speed (MB: MiB, ru_maxrss / 1024).

--sampling: the same for SmolLM2 sampled by `anchorlm.engine.generate` (which calls
`keep_freed_memory`), as `anchorlm sample` runs it (the precision `auto` picks, the weights
prepacked), at the recipes' temperature 0.8 and top-p 0.95, 48 new tokens a row, batch 32 and 96:
new tokens/s (the median of 2 calls after a warm-up call), page faults and kernel (system) CPU
seconds a call, in a fresh process each time, alternating the two (--rounds, default 3: about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_mb(cmd: list[str]) -> float:
    """Run `cmd`; its peak resident memory in MB (fails loudly if it fails)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()[-2000:]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return usage.ru_maxrss / 1024


CHILD = """
import json, resource, sys
sys.path.insert(0, {bench!r})
from bench import _smollm2_training
from anchorlm.precision import resolve
from anchorlm.allocator import keep_freed_memory
told = keep_freed_memory()
p = resolve("auto", 576)
r = _smollm2_training(p, {{p: 1.0}}, lambda m: None)
print(json.dumps({{"told_glibc": told, "precision": p, "tokens_per_s": r["tokens_per_s"],
                  "page_faults_per_step": r["page_faults_per_step"],
                  "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}}))
"""


SAMPLING_CHILD = """
import json, resource, statistics, sys, torch
sys.path.insert(0, {bench!r})
import sampling as S
from anchorlm.allocator import keep_freed_memory
from anchorlm.models import load_model
from anchorlm.precision import dtype, resolve
from anchorlm.prepack import prepack
told = keep_freed_memory()  # what engine.generate calls (a no-op under ANCHORLM_MALLOC=default)
p = resolve("auto", 576)
model, tok = load_model("smollm2", tokens="turns")
model.to(dtype(p))
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
out = {{"told_glibc": told, "precision": p}}
for batch in (32, 96):
    prepack(model, batch)  # as anchorlm sample runs it
    S.engine_run(model, tok, batch, S.RECIPES)  # warm-up
    speed, flt, kernel = [], [], []
    for _ in range(2):
        f, k = faults(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        speed.append(S.engine_run(model, tok, batch, S.RECIPES))
        flt.append(faults() - f)
        kernel.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - k)
    out[str(batch)] = {{"tokens_per_s": round(statistics.median(speed), 1), "page_faults_per_call": min(flt),
                       "kernel_seconds_per_call": round(min(kernel), 3)}}
out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def sampling_memory(rounds: int = 3) -> dict:
    """SmolLM2 sampling's speed, page faults and peak memory, glibc's defaults against
    keep_freed_memory, each in a fresh process (see the module doc)."""

    def show(name: str, x: dict) -> None:
        print(f"SmolLM2 sampling, {name:17s}: peak {x['peak_mb']:6,d} MB  "
              + "  ".join(f"batch {b}: {x[b]['tokens_per_s']:6.1f} tok/s, {x[b]['page_faults_per_call']:8,d} page "
                          f"faults, {x[b]['kernel_seconds_per_call']:.2f} s in the kernel a call"
                          for b in ("32", "96")), flush=True)  # fmt: skip

    runs = _alternating(SAMPLING_CHILD.format(bench=str(ROOT / "benchmarks")), rounds, show)
    med = lambda name, b: statistics.median(x[b]["tokens_per_s"] for x in runs[name])  # noqa: E731
    res = {
        **_peaks(runs),
        "settings": "temperature 0.8, top-p 0.95, 48 new tokens a row",
        "kernel_seconds_per_call_median": {
            k: {b: statistics.median(x[b]["kernel_seconds_per_call"] for x in v) for b in ("32", "96")}
            for k, v in runs.items()
        },
        "tokens_per_s_ratio": {
            b: round(med("keep_freed_memory", b) / med("glibc_defaults", b), 3) for b in ("32", "96")
        },
    }
    print(f"keep_freed_memory / glibc defaults (medians): peak memory {res['peak_ratio']:.2f}x, tokens/s "
          + ", ".join(f"batch {b} {v:.2f}x" for b, v in res["tokens_per_s_ratio"].items()))  # fmt: skip
    return res


def _alternating(code: str, rounds: int, show) -> dict:
    """{setting: [the JSON of each run]}: glibc's defaults and keep_freed_memory, each in a fresh
    process `rounds` times, which of the two goes first alternating (the machine drifts)."""
    runs: dict = {"glibc_defaults": [], "keep_freed_memory": []}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            runs[name].append(_child(code, name))
            show(name, runs[name][-1])
    return runs


def _peaks(runs: dict) -> dict:
    """The provenance, the runs and their peak memory: medians, ranges and the ratio."""
    from anchorlm.provenance import provenance

    peak = {k: statistics.median(r["peak_mb"] for r in v) for k, v in runs.items()}
    return {
        "provenance": provenance(precision=runs["glibc_defaults"][0]["precision"]),
        "runs": runs,
        "peak_mb_median": peak,
        "peak_mb_range": {
            k: [min(r["peak_mb"] for r in v), max(r["peak_mb"] for r in v)] for k, v in runs.items()
        },
        "peak_ratio": round(peak["keep_freed_memory"] / peak["glibc_defaults"], 3),
    }


def _child(code: str, name: str) -> dict:
    """Run `code` in a fresh process with glibc's allocator as it comes or told to keep freed
    memory; the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["ANCHORLM_MALLOC"] = "default" if name == "glibc_defaults" else "keep"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the {name} process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def training_memory(rounds: int = 3) -> dict:
    """SmolLM2 training's peak memory and speed, glibc's defaults against keep_freed_memory, each
    in a fresh process (see the module doc)."""

    def show(name: str, r: dict) -> None:
        print(f"SmolLM2 training, {name:17s}: peak {r['peak_mb']:6,d} MB  {r['tokens_per_s']:6.1f} tok/s  "
              f"{r['page_faults_per_step']:8,d} page faults a step", flush=True)  # fmt: skip

    runs = _alternating(CHILD.format(bench=str(ROOT / "benchmarks")), rounds, show)
    speed = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    res = {
        **_peaks(runs),
        "batch": "8x256",
        "tokens_per_s_ratio": round(speed["keep_freed_memory"] / speed["glibc_defaults"], 3),
    }
    print(f"keep_freed_memory / glibc defaults (medians): peak memory {res['peak_ratio']:.2f}x, "
          f"tokens/s {res['tokens_per_s_ratio']:.2f}x")  # fmt: skip
    return res


def write_corpus(rows: list[dict], n_shards: int, per_shard: int, out: Path) -> None:
    (out / "shards").mkdir(parents=True)
    with open(out / "one.jsonl", "w") as one:
        for s in range(n_shards):
            with open(out / "shards" / f"part-{s:04d}.jsonl", "w") as fh:
                for i in range(per_shard):
                    r = dict(rows[(s * per_shard + i) % len(rows)], id=f"doc-{s}-{i}")
                    line = json.dumps(r) + "\n"
                    fh.write(line)
                    one.write(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs-per-shard", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=2, help="shards at 1x; 10x has ten times as many")
    ap.add_argument(
        "--training", action="store_true", help="SmolLM2 training: glibc defaults against keep_freed_memory"
    )
    ap.add_argument(
        "--sampling", action="store_true", help="SmolLM2 sampling: glibc defaults against keep_freed_memory"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="with --training or --sampling: fresh processes of each"
    )
    ap.add_argument("--out", help="with --training or --sampling: where its JSON goes "
                    "(default docs/benchmarks-memory-training.json or -sampling.json)")  # fmt: skip
    args = ap.parse_args()
    if args.training or args.sampling:
        kind = "training" if args.training else "sampling"
        res = (training_memory if args.training else sampling_memory)(args.rounds)
        Path(args.out or ROOT / "docs" / f"benchmarks-memory-{kind}.json").write_text(
            json.dumps(res, indent=1) + "\n"
        )
        return
    with gzip.open(ROOT / "anchorlm/corpus/corpus.jsonl.gz", "rt") as fh:
        rows = [r for r in map(json.loads, fh) if r.get("split") != "heldout"]
    random.Random(0).shuffle(rows)  # every shard, at either scale, draws from the same mix of sources
    tmp = Path(tempfile.mkdtemp(prefix="anchorlm-mem-"))
    cli = [sys.executable, "-m", "anchorlm.cli"]
    fit = f"annotate.fit_max_docs={args.shards * args.docs_per_shard}"
    results = {}
    for scale in (1, 10):
        d = tmp / f"x{scale}"
        write_corpus(rows, args.shards * scale, args.docs_per_shard, d)
        for layout, corpus in (("sharded", d / "shards"), ("one file", d / "one.jsonl")):
            ann, tok = d / f"ann-{layout[:3]}", tmp / "tok"
            a = peak_mb([*cli, "annotate", "--corpus", str(corpus), "--set", fit, "--out", str(ann)])
            if not tok.exists():  # one tokenizer for every run, trained on the 1x annotation
                subprocess.run([*cli, "tokenizer", "--annotated", str(ann), "--out", str(tok)], check=True,
                               capture_output=True)  # fmt: skip
            t = peak_mb([*cli, "tokenize", "--annotated", str(ann), "--tokenizer", str(tok),
                         "--variant", "annotated", "--out", str(d / f"tok-{layout[:3]}")])  # fmt: skip
            mb = (d / "one.jsonl").stat().st_size / 1e6
            results[(layout, scale)] = (a, t)
            print(f"{layout:9s} {scale:>3d}x  {args.shards * scale * args.docs_per_shard:6d} docs  "
                  f"{mb:6.1f} MB  annotate peak {a:7.1f} MB  tokenize peak {t:7.1f} MB", flush=True)  # fmt: skip
    print("\npeak memory, 10x corpus / 1x corpus (1.0 = does not grow with the corpus):")
    for layout in ("sharded", "one file"):
        (a1, t1), (a10, t10) = results[(layout, 1)], results[(layout, 10)]
        print(f"  {layout:9s} annotate {a10 / a1:.2f}   tokenize {t10 / t1:.2f}")


if __name__ == "__main__":
    main()
