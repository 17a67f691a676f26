"""Rebuild the bundled demo corpus `anchorlm/corpus/corpus.jsonl.gz` from its Debian sources.

    python scripts/build_corpus.py            # downloads the .deb files with `apt-get download`

Needs no root: `apt-get download` fetches the packages into a temporary directory, `dpkg -x`
unpacks them, and the Bible text is read with the package's own `bible` program. The output is
byte-for-byte reproducible from the same package versions (see data/README.md).

Documents and categories:
  * fortunes, fortunes-min (BSD licence), fortunes-bofh-excuses (public domain): one document per
    fortune cookie, category = the cookie file (44 files);
  * jargon-text (public domain): one document per Jargon File entry, category `jargon`;
  * bible-kjv-text (public domain text): one document per chapter, category = a group of books
    (`bible-law`, `bible-history`, `bible-wisdom`, `bible-prophets`, `bible-gospels`, `bible-letters`).
A deterministic 5% of documents (by hash of the id) is marked `split: heldout` and stays out of
every training stage.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import tempfile
from pathlib import Path

PACKAGES = ["fortunes", "fortunes-min", "fortunes-bofh-excuses", "jargon-text", "bible-kjv-text", "bible-kjv"]
HELDOUT_PERCENT = 5

BIBLE_GROUPS = {
    "bible-law": ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy"],
    "bible-history": [
        "Joshua",
        "Judges",
        "Ruth",
        "1 Samuel",
        "2 Samuel",
        "1 Kings",
        "2 Kings",
        "1 Chronicles",
        "2 Chronicles",
        "Ezra",
        "Nehemiah",
        "Esther",
        "Acts",
    ],
    "bible-wisdom": ["Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon"],
    "bible-prophets": [
        "Isaiah",
        "Jeremiah",
        "Lamentations",
        "Ezekiel",
        "Daniel",
        "Hosea",
        "Joel",
        "Amos",
        "Obadiah",
        "Jonah",
        "Micah",
        "Nahum",
        "Habakkuk",
        "Zephaniah",
        "Haggai",
        "Zechariah",
        "Malachi",
        "Revelation",
    ],
    "bible-gospels": ["Matthew", "Mark", "Luke", "John"],
}  # every other book (the letters) goes to bible-letters


def split_of(doc_id: str) -> str:
    h = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 100
    return "heldout" if h < HELDOUT_PERCENT else "train"


def fortunes(root: Path):
    d = root / "usr/share/games/fortunes"
    for f in sorted(p for p in d.iterdir() if p.is_file() and "." not in p.name):
        raw = f.read_text(encoding="utf-8", errors="replace")
        for i, cookie in enumerate(re.split(r"^%\s*$", raw, flags=re.M)):
            text = cookie.strip("\n").rstrip()
            if text.strip():
                yield {"id": f"fortunes/{f.name}/{i}", "text": text, "category": f.name, "source": "fortunes"}


def jargon(root: Path):
    raw = gzip.decompress((root / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes())
    lines = raw.decode("utf-8", errors="replace").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("   :(TM): "))
    entries, cur = [], []
    for line in lines[start:]:
        if re.match(r"^   :[^ ].*?:", line) and cur:
            entries.append(cur)
            cur = []
        cur.append(line[3:] if line.startswith("   ") else line)
    entries.append(cur)
    for i, e in enumerate(entries):
        text = "\n".join(e).strip()
        if text and not text.startswith("Appendix"):
            yield {"id": f"jargon/{i}", "text": text, "category": "jargon", "source": "jargon-text"}


def bible(root: Path):
    binary = root / "usr/bin/bible"
    out = subprocess.run(
        [str(binary), "-p", str(root / "usr/lib"), "Gen1:1-Rev22:21"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    group_of = {b: g for g, books in BIBLE_GROUPS.items() for b in books}
    heading = re.compile(r"^([1-3]? ?[A-Z][a-z]+(?: of [A-Z][a-z]+)?) (\d+)$", flags=re.M)
    heads = list(heading.finditer(out))
    for m, nxt in zip(heads, heads[1:] + [None]):
        book, chapter = m.group(1), m.group(2)
        body = out[m.end() : nxt.start() if nxt else len(out)]
        verses = [
            re.sub(r"\s+", " ", v).strip() for v in re.split(r"^\s*\d+ ", body, flags=re.M) if v.strip()
        ]
        # five verses a paragraph, so the chunker has blank lines to split on
        paras = [" ".join(verses[i : i + 5]) for i in range(0, len(verses), 5)]
        yield {
            "id": f"bible/{book}/{chapter}",
            "text": f"{book} {chapter}\n\n" + "\n\n".join(paras),
            "category": group_of.get(book, "bible-letters"),
            "source": "bible-kjv-text",
        }


def unpack(packages: list[str], tmp: Path, debs: Path | None = None) -> Path:
    """The Debian `packages` fetched with `apt-get download` into `tmp` (or the .deb files already in
    `debs`) and unpacked with `dpkg -x` (no root needed); returns the root they were unpacked into."""
    if debs is None:
        debs = tmp
        subprocess.run(["apt-get", "download", *packages], cwd=tmp, check=True)
    root = tmp / "root"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="anchorlm/corpus/corpus.jsonl.gz")
    ap.add_argument("--debs", default=None, help="directory that already holds the .deb files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(PACKAGES, Path(tmp), Path(args.debs) if args.debs else None)
        docs = [*fortunes(root), *jargon(root), *bible(root)]
    n_bytes = 0
    # a fixed name and time in the gzip header: the same bytes wherever the output is written
    with open(args.out, "wb") as raw, gzip.GzipFile("corpus.jsonl", "wb", fileobj=raw, mtime=0) as f:
        for d in docs:
            d["split"] = split_of(d["id"])
            n_bytes += len(d["text"].encode())
            f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    cats = sorted({d["category"] for d in docs})
    print(
        f"wrote {len(docs)} documents, {n_bytes / 1e6:.2f} MB of text, {len(cats)} categories to {args.out}"
    )


if __name__ == "__main__":
    main()
