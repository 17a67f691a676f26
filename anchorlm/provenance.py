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


def describe_code(code: dict) -> str:
    """One line for a report: 'anchorlm 0.1.0 (commit 4b8bb8d96c, uncommitted changes)'."""
    if not code.get("git_commit"):
        return f"anchorlm {code.get('anchorlm', '?')}"
    dirty = ", uncommitted changes" if code.get("git_dirty") else ""
    return f"anchorlm {code.get('anchorlm')} (commit {code['git_commit'][:10]}{dirty})"


def describe(m: dict) -> str:
    """One line for a report: 'NVIDIA H200' or 'AMD EPYC (25/17), 2 cores, bf16 units: yes (avx512_bf16)'."""
    if m.get("gpu"):
        return f"GPU {m['gpu']}"
    flags = ", ".join(m.get("cpu_bf16_flags") or [])
    if m.get("cpu_bf16_units"):
        units = f"yes ({flags})" if flags else "yes (torch says so; no bf16 flag in /proc/cpuinfo)"
    else:  # torch's answer decides; flags it does not trust are named, not hidden
        units = f"no (torch says no, though the CPU flags name {flags})" if flags else "no"
    return f"CPU {m.get('cpu')} ({m.get('cpu_family_model')}), {m.get('cores')} cores, bf16 units: {units}"


# What a cached study cell's numbers cannot depend on: the recipes (each cell's identity holds the
# config that made it) and the server (no study imports it).
NOT_COMPUTING = ("anchorlm/configs/", "anchorlm/serve/")


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """anchorlm's version and, when it runs from a git checkout: the commit; whether the package's
    files differed from it (dirty: the numbers may come from uncommitted code, named by a digest of
    the diff); and `package_tree`, a digest of the committed files that compute (the package but
    NOT_COMPUTING), with `package_diff` for uncommitted changes to them."""
    out: dict = {"anchorlm": versions().get("anchorlm")}
    if not (REPO / ".git").exists():  # an installed copy: no checkout of its own to name
        return out

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=30)

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return out
        out["git_commit"] = commit.stdout.decode().strip()
        diff = git("diff", "HEAD", "--", "anchorlm").stdout
        out["git_dirty"] = bool(diff.strip())
        if out["git_dirty"]:  # which uncommitted changes: two dirty trees are not the same code
            out["git_diff"] = hashlib.sha256(diff).hexdigest()[:12]
        files = [line for line in git("ls-tree", "-r", "HEAD", "--", "anchorlm").stdout.decode().splitlines()
                 if not line.split("\t", 1)[-1].startswith(NOT_COMPUTING)]  # fmt: skip
        out["package_tree"] = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
        skip = [f":(exclude){p.rstrip('/')}" for p in NOT_COMPUTING]
        computing = git("diff", "HEAD", "--", "anchorlm", *skip).stdout
        if computing.strip():
            out["package_diff"] = hashlib.sha256(computing).hexdigest()[:12]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def provenance(precision: str | None = None) -> dict:
    """Everything above in one mapping, with the precision that ran where one did."""
    out = {"machine": machine(), "code": code_version(), "versions": versions()}
    if precision:
        out["precision"] = precision
    return out
