"""Prompt sets shipped as package data (README.md beside this file says what each is and its
licence): `prompt_file('noveltybench')` is the path of the 100 NoveltyBench curated prompts."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def shipped() -> list[str]:
    """The names of the shipped prompt sets."""
    return sorted(p.stem for p in HERE.glob("*.jsonl"))


def prompt_file(name: str | Path) -> Path:
    """A prompt file by path, or one shipped with anchorlm by name."""
    p = Path(name)
    if p.exists() or p.suffix or len(p.parts) > 1:
        return p
    if (HERE / f"{p.name}.jsonl").is_file():
        return HERE / f"{p.name}.jsonl"
    raise FileNotFoundError(
        f"prompts {str(name)!r}: no such file, and not a shipped set ({', '.join(shipped())})"
    )
