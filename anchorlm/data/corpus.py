"""Read a corpus: JSONL (optionally .gz), Parquet, or a `datasets` dataset saved on disk.

Each document is a dict with the text field plus any metadata fields. Bad rows (invalid JSON,
undecodable bytes, a missing or empty text field) raise :class:`BadRowError` naming file and line,
or, with ``on_bad_row='skip'``, are skipped and counted in ``CorpusStats``.
"""

from __future__ import annotations

import gzip
import random
import re
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from anchorlm.config import CorpusConfig
from anchorlm.io import parse_line


class BadRowError(ValueError):
    """A corpus row that cannot be used; the message names the file, the line and what to fix."""


@dataclass
class CorpusStats:
    read: int = 0
    skipped: dict = field(default_factory=lambda: defaultdict(int))
    heldout: int = 0
    other_categories: int = 0  # left out by corpus.categories

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "heldout": self.heldout,
            "skipped": dict(self.skipped),
            "other_categories": self.other_categories,
        }


def check_readable(path: Path) -> None:
    """A corpus is a regular file or a directory: a named pipe or a device would block when opened
    and could not be read a second time (to fingerprint it, to resume)."""
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path} (set corpus.path)")
    if not (path.is_file() or path.is_dir()):
        raise BadRowError(
            f"{path}: not a regular file (a named pipe or a device?); anchorlm reads a corpus more than "
            "once, so write it to a file first"
        )


def _rows(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    """(line number, row or the error it raised) for every row in the file. A file that cannot be
    read on (a truncated or fake .gz, a corrupt Parquet file) raises BadRowError naming it and the
    last good line: its remaining rows cannot be skipped one by one."""
    check_readable(path)
    i = 0
    try:
        for i, row in _raw_rows(path):
            yield i, row
    except BadRowError:
        raise
    except (OSError, EOFError, zlib.error, ValueError) as e:
        what = "Parquet file" if path.name.endswith(".parquet") else "file"
        raise BadRowError(f"{path}: not a readable {what} after row {i}: {e}") from None


def _raw_rows(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    name = path.name
    if path.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # a DatasetDict: take its splits in order
            ds = [r for split in ds.values() for r in split]
        for i, row in enumerate(ds, 1):
            yield i, dict(row)
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        i = 0  # record batch by record batch: a large file is never read whole
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    i += 1
                    yield i, row
        except pa.ArrowException as e:
            raise BadRowError(f"{path}: not a readable Parquet file after row {i}: {e}") from None
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            for i, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    yield i, parse_line(raw)
                except ValueError as e:
                    yield i, e
    else:
        raise BadRowError(f"{path}: unknown corpus format; use .jsonl, .jsonl.gz, .parquet or a datasets dir")


def read_corpus(
    cfg: CorpusConfig, stats: CorpusStats | None = None, include_heldout: bool = False
) -> Iterator[dict]:
    """Yield valid documents; held-out ones only when `include_heldout` is set."""
    path = Path(cfg.file)
    check_readable(path)
    stats = stats if stats is not None else CorpusStats()
    docs = list(iter_valid(path, cfg, stats, include_heldout))
    yield from _cap_per_category(docs, cfg)


def iter_valid(
    path: Path, cfg: CorpusConfig, stats: CorpusStats, include_heldout: bool = False
) -> Iterator[dict]:
    """Stream the valid documents of one file (row by row: nothing is held but the current row)."""
    for line, row in _rows(path):
        if isinstance(row, Exception):
            problem = str(row)
        else:
            text = row.get(cfg.text_field)
            problem = (
                "missing the text field " + repr(cfg.text_field)
                if text is None
                else f"field {cfg.text_field!r} is not a string"
                if not isinstance(text, str)
                else f"field {cfg.text_field!r} is empty"
                if not text.strip()
                else ""
            )
            if not problem:
                problem = _category_problem(row, cfg.category_field)
        if problem:
            if cfg.on_bad_row == "error":
                rid = f"row {row['id']!r}: " if isinstance(row, dict) and "id" in row else ""
                raise BadRowError(
                    f"{path}:{line}: {rid}{problem} (fix the row, or set corpus.on_bad_row=skip)"
                )
            stats.skipped[problem.split(" (")[0]] += 1
            continue
        row.setdefault("id", f"{path.name}:{line}")
        if cfg.categories and row.get(cfg.category_field) not in cfg.categories:
            stats.other_categories += 1
            continue
        if row.get(cfg.split_field) == cfg.heldout_value:
            stats.heldout += 1
            if not include_heldout:
                continue
        stats.read += 1
        yield row


def _category_problem(row: dict, field: str) -> str:
    """'' when the row's category (if any) can name a topic: a string or a finite number."""
    cat = row.get(field)
    if cat is None or isinstance(cat, str) or (isinstance(cat, (int, float)) and not isinstance(cat, bool)):
        return ""
    return f"field {field!r} must be a string or a number (not {cat!r})"


def _cap_per_category(docs: list[dict], cfg: CorpusConfig) -> list[dict]:
    if not cfg.max_chars_per_category:
        return docs
    rng = random.Random(cfg.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    used: dict = defaultdict(int)
    keep = set()
    for i in order:
        cat = docs[i].get(cfg.category_field)
        if used[cat] < cfg.max_chars_per_category:
            used[cat] += len(docs[i][cfg.text_field])
            keep.add(i)
    return [d for i, d in enumerate(docs) if i in keep]


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split on blank lines; split chunks longer than `max_chars` again at sentence or word ends.
    Linear in the text's length (a paragraph is walked by index, never copied piece by piece)."""
    out = []
    for para in re.split(r"\n\s*\n", text.strip("\n")):
        para = para.rstrip()
        if not para.strip():
            continue
        start, n = 0, len(para)

        while n - start > max_chars:
            cut = max(_back(para, start, ". ", max_chars), _back(para, start, "\n", max_chars))
            if cut < max_chars // 2:
                cut = _back(para, start, " ", max_chars)
            if cut <= 0:
                cut = max_chars
            out.append(para[start : start + cut + 1].rstrip())
            start += cut + 1
            while start < n and para[start].isspace():
                start += 1
        if para[start:].strip():
            out.append(para[start:])
    return out


def _back(para: str, start: int, sub: str, max_chars: int) -> int:
    """The last `sub` in para[start : start + max_chars], relative to start (-1: none)."""
    at = para.rfind(sub, start, start + max_chars)
    return at - start if at >= 0 else -1
