"""What made a result: the machine (CPU, its bf16 units, GPU), the code (anchorlm's version, the
git commit and whether the tree was dirty) and the pinned library versions. Every manifest, every
results JSON and every report records them, so a published number says where it came from."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from anchorlm.precision import cpu_bf16_units

PACKAGES = ("anchorlm", "torch", "transformers", "peft", "tokenizers", "datasets", "sentence-transformers")
REPO = Path(__file__).resolve().parents[1]


def versions() -> dict:
    """Python's and the libraries' versions that change numbers."""
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def _cpuinfo() -> dict[str, str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for ln in lines:
        if ":" in ln:
            k, v = ln.split(":", 1)
            out.setdefault(k.strip(), v.strip())
    return out


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """The machine: CPU model (with its family and model numbers, which tell AMD Zen generations
    apart where the name is only "AMD EPYC"), cores, its bf16 units, and the GPU if one is used."""
    info = _cpuinfo()
    flags = info.get("flags", "").split()
    out = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cores": os.cpu_count(),
        "cpu_bf16_units": cpu_bf16_units(),
        "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def describe(m: dict) -> str:
    """One line for a report: 'NVIDIA H200' or 'AMD EPYC (25/17), 2 cores, bf16 units: yes (avx512_bf16)'."""
    if m.get("gpu"):
        return f"GPU {m['gpu']}"
    units = "yes (" + ", ".join(m.get("cpu_bf16_flags") or []) + ")" if m.get("cpu_bf16_units") else "no"
    return f"CPU {m.get('cpu')} ({m.get('cpu_family_model')}), {m.get('cores')} cores, bf16 units: {units}"


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """anchorlm's version and, when it runs from a git checkout, the commit, the git tree of the
    package's committed files, and whether the package's files differed from it (dirty: the numbers may come from uncommitted code, named by a digest of
    the diff)."""
    out: dict = {"anchorlm": versions().get("anchorlm")}
    if not (REPO / ".git").exists():  # an installed copy: no checkout of its own to name
        return out
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no", "--", "anchorlm"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            out["git_commit"] = commit.stdout.strip()
            tree = subprocess.run(
                [*git, "rev-parse", "HEAD:anchorlm"], capture_output=True, text=True, timeout=10
            )
            if tree.returncode == 0:  # the package's committed files: commits of docs or tests leave it
                out["package_tree"] = tree.stdout.strip()
            out["git_dirty"] = bool(status.stdout.strip())
            if out["git_dirty"]:  # which uncommitted changes: two dirty trees are not the same code
                diff = subprocess.run(
                    [*git, "diff", "HEAD", "--", "anchorlm"], capture_output=True, timeout=30
                )
                out["git_diff"] = hashlib.sha256(diff.stdout).hexdigest()[:12]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def provenance(precision: str | None = None) -> dict:
    """Everything above in one mapping, with the precision that ran where one did."""
    out = {"machine": machine(), "code": code_version(), "versions": versions()}
    if precision:
        out["precision"] = precision
    return out
