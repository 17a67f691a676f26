"""Files every stage reads and writes: JSONL rows read with errors that name the file and line,
and JSON / JSONL written atomically (to a temporary file, then renamed: a reader or a rerun after a
kill sees the whole file or none of it)."""

from __future__ import annotations

import contextlib
import json
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
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(row, dict):
        raise ValueError(f"the row is not a JSON object (it is a {type(row).__name__})")
    _check_text(row)
    return row


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


def write_json(path: str | Path, obj, indent: int | None = 1) -> None:
    with atomic(path) as fh:
        fh.write(json.dumps(obj, indent=indent, default=float, ensure_ascii=False))


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
