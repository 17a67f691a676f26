"""Corpora larger than memory: a directory (or glob) of Parquet / JSONL(.gz) shards, listed and
named here, and worked on shard by shard in `num_proc` processes (`map_shards`). The stages that
work on them own what they write: annotation (anchorlm.annotate) and packing (anchorlm.data.pack).

    annotate/shards/<shard>.jsonl + <shard>.done     one line per document, as annotated.jsonl
    tokens/shards/<shard>/ + <shard>.done            the blocks of each shard
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")


def list_shards(path: str | Path) -> list[Path] | None:
    """The shard files of a sharded corpus (sorted), or None when `path` is a single file or a
    `datasets` directory."""
    s = str(path)
    if any(c in s for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(s) if p.endswith(SUFFIXES))
        if not files:
            raise FileNotFoundError(f"corpus.path {s!r} matches no .parquet/.jsonl(.gz) files")
        return _distinct(files)
    p = Path(path)
    if not p.is_dir() or (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
        return None
    files = sorted(f for f in p.iterdir() if f.name.endswith(SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{p} holds no .parquet/.jsonl(.gz) shards and is not a `datasets` directory")
    return _distinct(files)


def _distinct(files: list[Path]) -> list[Path]:
    """Shards write their output under their name without suffix: two files with one name (x.jsonl
    and x.jsonl.gz, or x.jsonl in two directories) would write into one output."""
    by_name: dict = {}
    for f in files:
        by_name.setdefault(shard_name(f), []).append(f)
    clash = [v for v in by_name.values() if len(v) > 1]
    if clash:
        raise ValueError(
            f"shards {', '.join(map(str, clash[0]))} have one name ({shard_name(clash[0][0])!r}); "
            "rename or remove one, each shard needs its own name"
        )
    return files


def shard_name(path: Path) -> str:
    name = path.name
    for suf in SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def map_shards(fn, jobs: list, num_proc: int, desc: str) -> list:
    """`fn` over the shard jobs, in `num_proc` processes, with a progress bar counting shards."""
    from tqdm.auto import tqdm

    bar = dict(total=len(jobs), desc=desc, unit="shard")
    if num_proc <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, **bar)]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ProcessPoolExecutor(min(num_proc, len(jobs)), mp_context=get_context("spawn")) as pool:
        return list(tqdm(pool.map(fn, jobs), **bar))
