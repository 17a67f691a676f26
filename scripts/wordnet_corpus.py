"""A second corpus shaped like a user's own: WordNet's synsets, categories named `group.name`
(WordNet's lexicographer files: `noun.food`, `verb.motion`), and no split field.

    python scripts/wordnet_corpus.py OUT.jsonl      # fetches wordnet-base with `apt-get download`

Needs no root (`build_corpus.unpack`: `apt-get download` and `dpkg -x` into a temporary directory). One document per
synset: its words, then its gloss (definition and example sentences), e.g. "dog, domestic dog,
Canis familiaris: a member of the genus Canis ...". Fields `id`, `text`, `category` only: like the
corpus a user tried (issue 21: 14 categories named `group.name`, no split field), so the
classifier holds out a share itself. Not shipped: WordNet 3.0 is under its own licence
(Princeton), and this corpus is for trying the demo's recipe on text it was not chosen on
(`docs/demo-wordnet/`). Deterministic for the same package version.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from build_corpus import unpack  # scripts/, beside this one

# WordNet's lexicographer files (lexnames(5WN)): number -> name, of the 14 kept
CATEGORIES = {
    5: "noun.animal", 6: "noun.artifact", 8: "noun.body", 9: "noun.cognition", 10: "noun.communication",
    12: "noun.feeling", 13: "noun.food", 15: "noun.location", 18: "noun.person", 20: "noun.plant",
    27: "noun.substance", 28: "noun.time", 33: "verb.competition", 38: "verb.motion",
}  # fmt: skip
PER_CATEGORY = 400  # synsets drawn per category (seed 0); the demo caps characters per category anyway


def synsets(data: Path):
    """(lexicographer file number, words, gloss) of each synset of a WordNet `data.*` file."""
    for line in data.read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:  # the licence header
            continue
        head, gloss = line.split("|", 1)
        f = head.split()
        n = int(f[3], 16)  # w_cnt is hexadecimal
        words = [f[4 + 2 * i].replace("_", " ") for i in range(n)]
        words = [w.split("(")[0] for w in words]  # adjective markers such as "(a)"
        yield int(f[1]), words, gloss.strip()


def build(out: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack(["wordnet-base"], Path(tmp)) / "usr/share/wordnet"
        by_cat: dict[str, list[dict]] = {c: [] for c in CATEGORIES.values()}
        for part in ("noun", "verb"):
            for lex, words, gloss in synsets(root / f"data.{part}"):
                if lex in CATEGORIES:
                    cat = CATEGORIES[lex]
                    by_cat[cat].append({"id": f"wn/{cat}/{len(by_cat[cat])}", "text": f"{', '.join(words)}: {gloss}", "category": cat})
    rng = random.Random(0)
    rows = []
    for cat, docs in by_cat.items():
        rows += rng.sample(docs, min(PER_CATEGORY, len(docs)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    n = build(ap.parse_args().out)
    print(f"wrote {n} documents")


if __name__ == "__main__":
    main()
