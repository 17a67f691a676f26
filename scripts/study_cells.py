"""Carry a long study's finished cells from one session (or machine) to the next, in the repository.

A study's cell directory (`runs/...`) is not tracked, so a fresh checkout has none; this keeps what
its later cells and its results read, small enough to commit:

    .venv/bin/python scripts/study_cells.py save    --config reproduce-smollm2
    .venv/bin/python scripts/study_cells.py restore --config reproduce-smollm2

`save` copies the ledger (cells.json), compute.json, every score and forced-plan score, the
classifier's figures and every manifest into `<docs_dir>/<results_name>-cells/`, and gzips every
samples file (with its manifest) into `<docs_dir>/<results_name>-samples/` (where the study itself
keeps them). `restore` puts the ledger, scores and samples manifests back into the cell directory;
the study then makes a score again only where it is missing, and the samples and models it needs for
that (cells.Cells makes inputs only for a cell it makes). Models are never kept: a model whose
samples are all scored is not needed again, and one that is gets retrained from its seed. Model
manifests are kept for the record, not restored (a restored manifest would mark a model done whose
weights are not there). The ledger still refuses cells made by other code unless asked.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

from anchorlm.io import MARKER
from anchorlm.study.config import load_study_config

KEPT = (MARKER, "cells.json", "compute.json", "classifier-*.json", "models/**/*.scores-*.json",
        "models/**/*.forced-*.json", "models/**/*.manifest.json", "models/**/manifest.json")  # fmt: skip


def _kept(out: Path) -> list[Path]:
    found = {
        p for pattern in KEPT for p in out.glob(pattern) if "checkpoints" not in p.relative_to(out).parts
    }
    return sorted(p for p in found if p.is_file())


def save(out: Path, cells: Path, samples: Path) -> None:
    n = 0
    for p in _kept(out):
        dst = cells / p.relative_to(out)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
        n += 1
    k = 0
    for p in sorted(out.glob("models/**/samples/*.jsonl")):
        dst = samples / p.relative_to(out)
        gz = dst.with_name(dst.name + ".gz")
        if gz.exists() and gz.stat().st_mtime >= p.stat().st_mtime:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "rb") as fi, gzip.open(gz, "wb", compresslevel=9) as fo:
            shutil.copyfileobj(fi, fo)
        side = p.with_name(p.stem + ".manifest.json")
        if side.exists():
            shutil.copyfile(side, dst.with_name(side.name))
        k += 1
    print(f"kept {n} files in {cells} and {k} new samples files in {samples}")


def restore(out: Path, cells: Path) -> None:
    if not (cells / "cells.json").exists():
        raise SystemExit(f"{cells} holds no kept cells (no cells.json): nothing to restore")
    if (out / "cells.json").exists():
        raise SystemExit(f"{out} already has a ledger: restore only into a fresh cell directory")
    n = 0
    for p in _kept(cells):
        rel = p.relative_to(cells)
        if p.name == "manifest.json":
            continue  # a model's: kept for the record only
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
        n += 1
    print(f"restored {n} files into {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["save", "restore"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], help="recipe overrides, as for anchorlm reproduce")
    args = ap.parse_args()
    cfg = load_study_config(args.config, args.set)
    out, docs = Path(cfg.out_dir), Path(cfg.docs_dir)
    cells, samples = docs / f"{cfg.results_name}-cells", docs / f"{cfg.results_name}-samples"
    if args.step == "save":
        save(out, cells, samples)
    else:
        restore(out, cells)


if __name__ == "__main__":
    main()
