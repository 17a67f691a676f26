"""Peak memory of annotation and tokenisation at 1x and 10x corpus size, sharded against one file.

    .venv/bin/python benchmarks/memory.py [--docs-per-shard 1000] [--shards 2]

1x is `--shards` shards of `--docs-per-shard` documents (drawn from the shuffled bundled corpus,
repeating it when 10x needs more), 10x is ten times as many shards of the same size; the one-file rows hold the same documents in one JSONL.
Each stage runs as its own `anchorlm` process, as a user runs it, and its peak resident memory
(ru_maxrss from wait4) is printed, with the 10x/1x ratio measured in the same run. The annotator
state is fitted on the first `annotate.fit_max_docs` documents (set here to the 1x size), which
bounds the one corpus-wide step too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
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
    args = ap.parse_args()
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
