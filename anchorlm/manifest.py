"""The small manifest every stage writes beside its output: config, counts, and what made it
(anchorlm.provenance: machine, code version, library versions, the precision that ran)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from anchorlm.io import atomic
from anchorlm.provenance import code_version, machine, versions

__all__ = ["is_done", "versions", "write_manifest", "write_manifest_file"]


def write_manifest(out_dir: str | Path, stage: str, config: dict, counts: dict) -> dict:
    """`out_dir/manifest.json`; returns it."""
    return write_manifest_file(Path(out_dir) / "manifest.json", stage, config, counts)


def write_manifest_file(path: str | Path, stage: str, config: dict, counts: dict) -> dict:
    """A manifest at `path` (the main process writes it); returns it."""
    m = {
        "stage": stage,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config,
        "counts": counts,
        "versions": versions(),
        "code": code_version(),
        "machine": machine(),
    }
    if int(os.environ.get("RANK", "0")) != 0:  # in a multi-process run, the main process writes
        return m
    with atomic(path) as fh:
        fh.write(json.dumps(m, indent=2, default=str))
    return m


def is_done(out_dir: str | Path) -> bool:
    return (Path(out_dir) / "manifest.json").exists()
