"""The one guard against a stale output directory: every cell an orchestrator makes (shared data,
a model, a samples file, scores) is recorded in `<out>/cells.json` with its identity (the config and
inputs that make it) and the code that made it (anchorlm's version, git commit and uncommitted
changes, torch / transformers / peft versions).

`Ledger.cell` is the rule, for every cell alike: a cell recorded with another identity is refused,
naming what differs (its directory would be reused silently otherwise); a finished cell of the same
identity is reused, but only when the same code made it, unless the orchestrator was asked to
reuse cells of other code, in which case the results name every such cell; a cell on disk that the
ledger does not record (an older anchorlm's, or the user's own file) is refused likewise. A cell
that computes in a precision (training, sampling, scoring) records the one it ran in; `precision: auto`
resolves per machine (bf16 where the CPU has bf16 units), so a study resumed on another kind of
machine would mix precisions: such a cell counts as made by other code.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from anchorlm.io import differences, write_json
from anchorlm.provenance import code_version, versions

LEDGER = "cells.json"
CODE_PACKAGES = ("torch", "transformers", "peft")


def code_identity() -> dict:
    """What must match for a cached cell to count as made by this code: the package's computing
    files (provenance.code_version's `package_tree` and `package_diff`), not the commit, so that a
    study resumed after a commit of docs, tests, recipes or the server keeps its cells; and the
    libraries that compute. An installed copy without a checkout is named by its version."""
    v, code = versions(), code_version()
    if "package_tree" in code:
        code = {k: code[k] for k in ("anchorlm", "package_tree", "package_diff") if k in code}
    return {**code, **{p: v.get(p) for p in CODE_PACKAGES}}


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


class Ledger:
    def __init__(self, out: Path, reuse_other_code: bool = False):
        self.out = out
        self.path = out / LEDGER
        self.reuse_other_code = reuse_other_code
        self.entries: dict = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.code = json.loads(json.dumps(code_identity(), default=str))
        self.other_code: dict[str, dict] = {}  # cells reused though other code made them

    def _save(self) -> None:
        write_json(self.path, self.entries)

    def cell(self, path: Path, identity: dict, done: Callable[[], bool], make: Callable[[], object],
             precision: str | Callable[[], str] | None = None) -> bool:  # fmt: skip
        """Make the cell at `path` unless it is there, as the module doc says; True when it was made.
        `precision`: what this machine runs the cell in ('fp32' or 'bf16', or a function that says
        it, called only where it is needed; None: no such choice)."""
        rel = str(path.relative_to(self.out))
        identity = json.loads(json.dumps(identity, default=str))
        entry = self.entries.get(rel)
        if entry is not None and entry["identity"] != identity:
            diff = differences(entry["identity"], identity)
            raise ValueError(
                f"{path} holds a cell made from another config ({'; '.join(diff[:4])}); "
                "use a new --out, or delete it to make it again"
            )
        if done():
            if entry is None:
                if not self.reuse_other_code:
                    raise ValueError(
                        f"{path} exists but {self.path} does not record it (made by an older anchorlm, or "
                        "not by anchorlm); use a new --out, or delete it (or ask to reuse cells of other code)"
                    )
                self.other_code[rel] = {"code": "not recorded"}
            elif entry.get("code") != self.code:
                if not self.reuse_other_code:
                    diff = differences(entry.get("code") or {}, self.code)
                    raise ValueError(
                        f"{path} was made by other code ({'; '.join(diff[:3])}); a result made by other code "
                        "is not reused silently: use a new --out, delete it, or ask to reuse cells of "
                        "other code (the results then name them)"
                    )
                self.other_code[rel] = {"code": entry.get("code")}
            made_in = (entry or {}).get("precision")
            if made_in and callable(precision):
                precision = precision()
            if precision and made_in and made_in != precision:
                if not self.reuse_other_code:
                    raise ValueError(
                        f"{path} was made in {made_in} and this machine runs it in {precision} (`precision: "
                        "auto` follows the machine's bf16 units): its numbers would differ from a cell made "
                        "here. Go on where it was made, use a new --out, delete it, or ask to reuse cells of "
                        "other code (the results then name them)"
                    )
                self.other_code[rel] = {
                    **self.other_code.get(rel, {}),
                    "precision": made_in,
                    "here": precision,
                }
            return False
        self.entries[rel] = {"identity": identity, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if callable(precision):
            precision = precision()
        if precision:
            self.entries[rel]["precision"] = precision
        self._save()
        make()
        commit = code_version().get("git_commit")
        self.entries[rel].update(code=self.code, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if commit:
            self.entries[rel]["commit"] = commit  # which commit made it, for the record
        self._save()
        return True

    def behind(self, read: Callable[[str], bool]) -> None:
        """Name too the cells made by other code that the results read without visiting them: the
        samples and models behind a reused score (a score found is not opened further, so `cell`
        never sees what it was made from). `read(rel)` says whether the results read that cell."""
        for rel, entry in self.entries.items():
            if (
                rel not in self.other_code
                and "finished" in entry
                and entry.get("code") != self.code
                and read(rel)
            ):
                self.other_code[rel] = {"code": entry.get("code") or "not recorded"}
