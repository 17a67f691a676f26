"""The small manifest every stage writes beside its output: config, versions, counts."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

from anchorlm.io import atomic

PACKAGES = ("anchorlm", "torch", "transformers", "tokenizers", "datasets", "sentence-transformers")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(out_dir: str | Path, stage: str, config: dict, counts: dict) -> dict:
    m = {
        "stage": stage,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config,
        "counts": counts,
        "versions": versions(),
    }
    if int(os.environ.get("RANK", "0")) != 0:  # in a multi-process run, the main process writes
        return m
    with atomic(Path(out_dir) / "manifest.json") as fh:
        fh.write(json.dumps(m, indent=2, default=str))
    return m


def is_done(out_dir: str | Path) -> bool:
    return (Path(out_dir) / "manifest.json").exists()
