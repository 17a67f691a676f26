"""Files every stage reads and writes: JSONL rows read with errors that name the file and line,
and JSON / JSONL written atomically (to a temporary file, then renamed: a reader or a rerun after a
kill sees the whole file or none of it)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

LOCK = ".anchorlm.lock"


def parse_line(raw: bytes | str) -> dict:
    """One JSONL line as a JSON object, or a ValueError saying what is wrong with it."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise ValueError(f"bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        row = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(row, dict):
        raise ValueError(f"the row is not a JSON object (it is a {type(row).__name__})")
    _check_text(row)
    return row


def _no_duplicates(pairs: list) -> dict:
    """A JSON object whose keys are distinct (json keeps the last of two silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {dup!r} appears twice in one object")
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def finite(obj):
    """`obj` with every NaN or infinite float replaced by None (JSON's null): strict JSON readers
    reject bare NaN and Infinity, and a missing figure is what they mean."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # a numpy scalar
        return finite(obj.item())
    return obj


def _check_text(obj, depth: int = 0) -> None:
    """Strings must be encodable as UTF-8: a lone surrogate (a \\ud800 escape) is not text."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone surrogate (e.g. \\ud800), which is not text") from None
    elif isinstance(obj, dict):
        for v in obj.values():
            _check_text(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_text(v, depth + 1)


def read_jsonl(path: str | Path) -> list[dict]:
    """Every row of a JSONL file (blank lines skipped); a bad row raises ValueError naming file and
    line."""
    rows = []
    try:
        fh = open(path, "rb")
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a JSONL file") from None
    with fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(parse_line(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{i}: {e}") from None
    return rows


@contextlib.contextmanager
def atomic(path: str | Path, mode: str = "w"):
    """Open a temporary file beside `path`; it replaces `path` only when the block ends cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def gzip_copy(src: str | Path, dst: str | Path) -> None:
    """`src` gzipped to `dst`, atomically, with no timestamp: the same file gives the same bytes
    (kept samples in git change only where a sample did). The header names the temporary file, as
    the kept samples of the SmolLM2 study were written."""
    import gzip
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as fo:
                shutil.copyfileobj(fi, fo)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    """Strict JSON (NaN and infinities written as null), atomically."""
    with atomic(path) as fh:
        fh.write(json.dumps(finite(obj), indent=indent, default=_plain, ensure_ascii=False, allow_nan=False))


def _plain(obj):
    """Numpy scalars and arrays as JSON values."""
    if hasattr(obj, "tolist"):
        return finite(obj.tolist())
    return finite(float(obj))


def write_jsonl(path: str | Path, rows) -> int:
    """Write `rows` (an iterable of dicts) as JSONL, atomically; returns how many."""
    n = 0
    with atomic(path) as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


@contextlib.contextmanager
def lock_dir(path: str | Path):
    """Hold `path` (a run's output directory) for this process: a second run started into the same
    directory stops at once instead of writing beside the first. The lock is the operating
    system's (flock), so a killed run leaves none behind."""
    import fcntl

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / LOCK, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RuntimeError(
            f"{path} is in use by another anchorlm run ({holder}); wait for it to finish or use another output"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()


MARKER = ".anchorlm"  # in every output directory an orchestrator (demo, study) made


def claim_dir(path: str | Path, what: str, reuse: bool = False) -> Path:
    """Make `path` an output directory of anchorlm's: a new or empty directory gets the marker; a
    non-empty one without it (the user's own files) is refused unless `reuse`, so that a run never
    overwrites a user's report or takes a file it finds there for its own output."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; give a directory for the {what}")
    marker = path / MARKER
    # a directory an older anchorlm ran in holds its lock file instead of the marker
    if path.is_dir() and not marker.exists() and not (path / LOCK).exists():
        foreign = sorted(p.name for p in path.iterdir() if p.name not in (LOCK, MARKER))
        if foreign and not reuse:
            raise ValueError(
                f"{path} is not empty ({', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}) and "
                f"was not made by anchorlm; give a new directory, or pass --reuse-dir to write the {what} "
                "into it (files of the same names are overwritten or taken as stage outputs)"
            )
    path.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        marker.write_text(json.dumps({"made_by": "anchorlm", "for": what}) + "\n")
    return path


def differences(old, new, where: str = "") -> list[str]:
    """'key: old -> new' for each leaf that differs between two nested mappings (what a refused
    run or cell names)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]
