"""Carry a long study's finished cells from one session (or machine) to the next, in the repository.

A study's cell directory (`runs/...`) is not tracked, so a fresh checkout has none; this keeps what
its later cells and its results read, small enough to commit:

    .venv/bin/python scripts/study_cells.py save    --config reproduce-smollm2
    .venv/bin/python scripts/study_cells.py restore --config reproduce-smollm2

`save` copies the ledger (cells.json), compute.json, every score and forced-plan score, the
classifier's figures and every manifest of a finished cell into `<docs_dir>/<results_name>-cells/`,
and gzips every finished samples file (with its manifest) into `<docs_dir>/<results_name>-samples/`
(where the study itself keeps them); it appends the session to `sessions.json` (when, where, which
cells, their minutes: a killed study writes no compute.json) and compares every model trained again
with the manifest kept from its first training (`retrained.json` where they differ, and the first
manifest kept beside the new one as `manifest.first.json`: the samples and post-trainings made
before came from those weights). `restore` puts the ledger, scores and samples manifests back into the cell directory;
the study then makes a score again only where it is missing, and the samples and models it needs for
that (cells.Cells makes inputs only for a cell it makes). Models are never kept: a model whose
samples are all scored is not needed again, and one that is gets retrained from its seed. Model
manifests are kept for the record, not restored (a restored manifest would mark a model done whose
weights are not there). The ledger still refuses cells made by other code unless asked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from anchorlm.io import MARKER, gzip_copy
from anchorlm.study.config import load_study_config

FIRST = "manifest.first.json"  # a model retrained differently: its first training's manifest, kept beside
KEPT = (MARKER, "cells.json", "compute.json", "classifier-*.json", "models/**/*.scores-*.json",
        "models/**/*.forced-*.json", "models/**/*.manifest.json", "models/**/manifest.json")  # fmt: skip


def _kept(out: Path) -> list[Path]:
    found = {
        p for pattern in KEPT for p in out.glob(pattern) if "checkpoints" not in p.relative_to(out).parts
    }
    return sorted(p for p in found if p.is_file())


def _finished(out: Path) -> set[str]:
    """The cells the ledger records as finished (a cell killed after writing its file but before its
    entry was finished would be refused next time as made by unknown code: it is not kept)."""
    ledger = json.loads((out / "cells.json").read_text())
    return {k for k, v in ledger.items() if v.get("finished")}


def _cell_of(rel: Path) -> str:
    """The ledger key of the cell a kept file belongs to (a samples manifest: its samples file)."""
    if rel.name.endswith(".manifest.json"):
        return str(rel.with_name(rel.name.removesuffix(".manifest.json") + ".jsonl"))
    if rel.name == "manifest.json":
        return str(rel.parent)
    return str(rel)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)  # atomic: a killed save leaves the old file or the new one, never half of one


def save(out: Path, cells: Path, samples: Path) -> None:
    if (cells / "cells.json").exists():
        kept = set(json.loads((cells / "cells.json").read_text()))
        now = set(json.loads((out / "cells.json").read_text()))
        if kept - now:
            raise SystemExit(
                f"{cells} records {len(kept - now)} cells that {out} does not (was `restore` skipped?); "
                "saving would drop them: restore into a fresh directory first"
            )
    done = _finished(out)
    retrained = _compare_models(out, cells)
    retrained_models = {r["model"] for r in retrained}
    n = skipped = 0
    for p in _kept(out):
        rel = p.relative_to(out)
        if rel.parts[0] == "models" and _cell_of(rel) not in done:
            skipped += 1
            continue
        if p.name != "cells.json":
            first = (cells / rel).with_name(FIRST)
            if p.name == "manifest.json" and str(rel.parent) in retrained_models and not first.exists():
                _copy(cells / rel, first)  # the weights its first samples and post-trainings came from
            _copy(p, cells / rel)
            n += 1
    k = 0
    for p in sorted(out.glob("models/**/samples/*.jsonl")):
        rel = p.relative_to(out)
        if str(rel) not in done:
            continue
        gzip_copy(p, samples / rel.with_name(rel.name + ".gz"))
        side = p.with_name(p.stem + ".manifest.json")
        if side.exists():
            _copy(side, samples / rel.with_name(side.name))
        k += 1
    _copy(out / "cells.json", cells / "cells.json")  # the ledger last: it names only what is kept
    _log_session(out, cells, retrained)
    print(
        f"kept {n} files in {cells} ({skipped} of unfinished cells left out) and {k} samples files in {samples}"
    )
    if retrained:
        print(f"WARNING: {len(retrained)} models were trained again and differ from the kept record: "
              f"see {cells / 'retrained.json'}")  # fmt: skip


def _compare_models(out: Path, cells: Path) -> list[dict]:
    """Models trained again in this session (their weights are never kept) against the manifest
    kept from the first time: the same seed and code should give the same final loss and precision;
    where they do not, the scores drawn from the two trainings come from different weights."""
    found = []
    for m in sorted(out.glob("models/*/*/manifest.json")):
        old = cells / m.relative_to(out)
        if not old.exists():
            continue
        a, b = (json.loads(x.read_text())["counts"] for x in (old, m))
        if a.get("final_loss") != b.get("final_loss") or a.get("precision") != b.get("precision"):
            found.append({"model": str(m.parent.relative_to(out)), "kept": a, "now": b})
    if found:
        path = cells / "retrained.json"
        before = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(before + found, indent=1) + "\n")
    return found


def _log_session(out: Path, cells: Path, retrained: list) -> None:
    """One line per save in sessions.json: when, on what machine, which cells finished since the
    last save, and their minutes by stage from the ledger (a killed study writes no compute.json)."""
    from anchorlm.provenance import describe, machine

    path = cells / "sessions.json"
    log = json.loads(path.read_text()) if path.exists() else []
    seen = {c for s in log for c in s.get("cells", [])}
    ledger = json.loads((out / "cells.json").read_text())
    new = sorted(k for k, v in ledger.items() if v.get("finished") and k not in seen)
    minutes: dict = {}
    for k in new:
        v = ledger[k]
        t0, t1 = (time.mktime(time.strptime(v[x], "%Y-%m-%dT%H:%M:%S")) for x in ("started", "finished"))
        kind = (
            "score"
            if k.endswith(".json")
            else "sample"
            if k.endswith(".jsonl")
            else "model"
            if k.startswith("models")
            else "data"
        )
        minutes[kind] = round(minutes.get(kind, 0) + (t1 - t0) / 60, 1)
    log.append({"saved": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": describe(machine()), "cells": new,
                "minutes_by_kind": minutes, "models_retrained_differently": len(retrained)})  # fmt: skip
    path.write_text(json.dumps(log, indent=1) + "\n")


def restore(out: Path, cells: Path) -> None:
    if not (cells / "cells.json").exists():
        raise SystemExit(f"{cells} holds no kept cells (no cells.json): nothing to restore")
    if (out / "cells.json").exists():
        raise SystemExit(f"{out} already has a ledger: restore only into a fresh cell directory")
    n = 0
    for p in _kept(cells):
        rel = p.relative_to(cells)
        if p.name in ("manifest.json", "cells.json"):
            continue  # a model's: kept for the record only; the ledger: last, below
        _copy(p, out / rel)
        n += 1
    _copy(cells / "cells.json", out / "cells.json")  # last: an interrupted restore can be run again
    print(f"restored {n} files and the ledger into {out}")


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
