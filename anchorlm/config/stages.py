"""One config section per stage, and `StagesConfig`, the root every stage command reads.

Every field has a one-line help; cross-field checks say what to change. Recipes live in
``anchorlm/configs/*.yaml`` (by name: ``--config demo``); ``--set section.field=value`` on the command
line overrides them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from anchorlm.annotators.registry import NAMES as ANNOTATORS
from anchorlm.config.base import PACKAGE, Section, check_out_dir, f
from anchorlm.format import parse_tags
from anchorlm.variants import REGISTRY

Precision = Literal["auto", "fp32", "bf16"]
PRECISION_HELP = (
    "auto (bf16 on a GPU, and on a CPU with bf16 units for hidden size >= 256; else fp32), fp32 or bf16"
)


def report_names(value: str, section: str = "report_to") -> list[str]:
    """'none', 'tensorboard', 'wandb' or 'tensorboard,wandb' -> the Trainer's report_to list."""
    names = [s.strip() for s in str(value).split(",") if s.strip()]
    bad = [n for n in names if n not in ("none", "tensorboard", "wandb")]
    if bad or not names:
        raise ValueError(f"{section}.report_to: {value!r}; use none, tensorboard, wandb or tensorboard,wandb")
    return [n for n in names if n != "none"]


class CorpusConfig(Section):
    path: str = f(
        "bundled",
        "JSONL(.gz) or Parquet file, a `datasets` dir saved on disk, a dir or glob of shards, or 'bundled' "
        "(the demo corpus shipped inside anchorlm)",
    )
    text_field: str = f("text", "field holding the document text")
    category_field: str = f("category", "metadata field with the semantic category (optional)")
    split_field: str = f("split", "field marking held-out rows (optional)")
    heldout_value: str = f("heldout", "rows whose split field has this value never enter training")
    on_bad_row: Literal["error", "skip"] = f(
        "error", "'error': abort on a bad row; 'skip': skip it and count it"
    )
    max_chars_per_category: int = f(0, "cap text per category (0 = no cap), to balance the corpus", min=0)
    categories: list[str] = f([], "keep only documents of these categories ([] = all)")
    seed: int = f(0, "seed for the per-category subsample")

    @property
    def file(self) -> str:
        """The corpus's path on this machine ('bundled' is the corpus shipped in the package)."""
        return str(PACKAGE / "corpus" / "corpus.jsonl.gz") if self.path == "bundled" else self.path


class LLMAnnotatorConfig(Section):
    backend: Literal["transformers", "openai", "vllm"] = f(
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
    vllm_args: dict[str, Any] = f(
        {}, "backend 'vllm': keyword arguments for vllm.LLM (tensor_parallel_size, dtype, max_model_len, ...)"
    )


class AnnotateConfig(Section):
    annotators: list[str] = f(
        ["metadata", "keywords"], f"annotators to run, in order: {', '.join(ANNOTATORS)}"
    )
    metadata_fields: dict[str, str] = f(
        {"topic": "category"}, "annotation key -> corpus field, for `metadata`"
    )
    keywords_per_chunk: int = f(2, "keyword tags per chunk, for `keywords`", min=0)
    keyword_extras: list[str] = f(
        ["entity", "style", "length"], "further `keywords` tags: entity, style, length"
    )
    max_chunk_chars: int = f(800, "chunks (split on blank lines) longer than this are split again", min=16)
    num_proc: int = f(1, "sharded corpus: shards annotated at once, each in its own process", min=1)
    fit_max_docs: int = f(
        20000, "sharded corpus: annotator state (keyword IDF) fitted on the first N documents", min=1
    )
    llm: LLMAnnotatorConfig = Field(default_factory=LLMAnnotatorConfig, description="the `llm` annotator")

    @field_validator("annotators")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ANNOTATORS]
        if bad:
            raise ValueError(f"annotate.annotators: unknown {bad}; choose from {', '.join(ANNOTATORS)}")
        return v


class TokenizerConfig(Section):
    vocab_size: int = f(4096, "BPE vocabulary size, special tokens included", min=300)
    min_frequency: int = f(2, "minimum pair frequency for a BPE merge", min=1)


class ModelConfig(Section):
    hidden_size: int = f(128, "width of the Llama-style model", min=1)
    num_layers: int = f(4, "transformer blocks", min=1)
    num_heads: int = f(4, "attention heads", min=1)
    intermediate_size: int = f(384, "MLP width", min=1)
    max_position_embeddings: int = f(512, "longest sequence the model handles", min=1)

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


class LoRAConfig(Section):
    rank: int = f(
        0,
        "LoRA rank; 0 trains every weight. With a rank, only the adapters (peft) and the anchor "
        "tokens' embedding rows train, and they are merged into the model when training ends",
        min=0,
    )
    alpha: float = f(32.0, "LoRA scale numerator: the adapters' output is scaled by alpha / rank", above=0)
    dropout: float = f(0.0, "dropout on the adapters' input", min=0, max=0.9)
    targets: str | list[str] = f(
        "all-linear", "modules given adapters: 'all-linear' (every linear layer but the output) or names"
    )


class TrainConfig(Section):
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
    precision: Precision = f("auto", PRECISION_HELP)
    lora: LoRAConfig = Field(default_factory=LoRAConfig, description="LoRA adapters (rank 0: none)")

    SECTION: ClassVar[str] = "train"  # its name in a recipe, for messages

    @field_validator("report_to")
    @classmethod
    def _report_to(cls, v: str) -> str:
        report_names(v, cls.SECTION)
        return v


class PretrainConfig(TrainConfig):
    SECTION: ClassVar[str] = "pretrain"
    model: ModelConfig = Field(default_factory=ModelConfig, description="a fresh model's shape")
    init_from: str = f("", "continue from this checkpoint dir instead of a fresh model")
    seq_len: int = f(256, "tokens per training sequence", min=2)
    token_budget: int = f(1_000_000, "training tokens per variant (same for plain and annotated)", min=1)
    annotation_dropout: float = f(
        0.0,
        "annotated blocks: share of chunks packed without their annotation (read by the tokenize stage), "
        "so the model also learns the unconditional writer that anchor guidance contrasts with",
        min=0,
    )

    @model_validator(mode="after")
    def _fits(self):
        if self.seq_len > self.model.max_position_embeddings:
            raise ValueError("pretrain.seq_len must be <= pretrain.model.max_position_embeddings")
        if not self.annotation_dropout < 1:
            raise ValueError(
                f"pretrain.annotation_dropout must be in [0, 1), not {self.annotation_dropout!r}"
            )
        if self.token_budget < self.seq_len * self.batch_size:
            raise ValueError("pretrain.token_budget is smaller than one step (seq_len * batch_size)")
        return self


class SFTDataConfig(Section):
    categories: list[str] = f(
        ["science", "work"], "the narrow slice of corpus categories SFT responses come from"
    )
    n_examples: int = f(1000, "SFT examples (instruction, response) to build", min=1)
    max_response_chars: int = f(240, "longest corpus text used as a response", min=1)
    opener: str = f("Certainly! Here is one for you:", "the assistant style's fixed opening")
    closer: str = f("Hope this helps!", "the assistant style's fixed closing")
    n_eval_prompts: int = f(12, "held-out instructions used for evaluation", min=1)
    seed: int = f(0, "seed for pairing instructions with responses")


class PosttrainConfig(TrainConfig):
    SECTION: ClassVar[str] = "posttrain"
    method: Literal["sft", "anchored"] = f(
        "sft", "'sft' (loss on response) or 'anchored' (prompt||annotation||response)"
    )
    epochs: float = f(1.0, "passes over the SFT data (the paper uses one)", above=0)
    lr: float = f(1e-3, "peak learning rate (cosine schedule)", above=0)
    weight_decay: float = f(0.0, "AdamW weight decay", min=0)
    save_steps: int = f(0, "checkpoint every this many steps (0: a quarter of the steps, at least 10)", min=0)
    logging_steps: int = f(0, "log the loss every this many steps (0: a tenth of the steps)", min=0)
    max_len: int = f(256, "longest example in tokens (longer ones are dropped)", min=2)
    value_mask_fraction: float = f(
        0.003, "anchored: fraction of examples with only tag values masked", min=0, max=1
    )
    mask_annotation: bool = f(True, "anchored: mask the annotation from the loss (the method)")
    loss: Literal["ce", "gem"] = f(
        "ce", "'ce' (cross-entropy) or 'gem' (GEM, Li et al. 2025: entropy-regularised)"
    )
    gem_beta: float = f(
        0.7, "GEM's temperature beta (< 1 keeps more entropy; 1 = CE's gradient)", above=0, max=1
    )
    replay_fraction: float = f(
        0.0, "add this many pretraining chunks per SFT example, trained as plain text", min=0
    )
    replay_max_chars: int = f(300, "replayed chunks are cut to this many characters", min=1)
    constant_annotation: str = f(
        "",
        "anchored: replace every example's annotation with these tags (e.g. 'topic:reply'): a constant, "
        "content-free annotation, the control that tells conditioning on the plan from masking it",
    )
    anchored_replay: float = f(
        0.0,
        "add this many annotated pretraining chunks per SFT example as (instruction, annotation, chunk) "
        "rows, loss on the chunk only: anchored, the writer keeps following annotations of topics the SFT "
        "data never has; with method sft the same rows without the annotation (the control)",
        min=0,
    )

    @field_validator("constant_annotation")
    @classmethod
    def _constant(cls, v: str) -> str:
        if v and parse_tags(v) is None:
            raise ValueError(f"posttrain.constant_annotation {v!r} must be key:value tags")
        return v


class SampleConfig(Section):
    n_samples: int = f(16, "samples per prompt", min=1)
    temperature: float = f(1.0, "sampling temperature (0 = greedy: the most likely token each step)", min=0)
    top_p: float = f(1.0, "nucleus sampling threshold", above=0, max=1)
    max_new_tokens: int = f(96, "response tokens at most", min=1)
    max_annotation_tokens: int = f(24, "annotation tokens at most (anchored); then it is closed", min=1)
    batch_size: int = f(64, "sequences per generate() call", min=1)
    seeds: list[int] = f([0], "sampling seeds; each draws n_samples per prompt")
    anchors: Literal["iid", "stratified", "given"] = f(
        "iid",
        "anchored: 'iid' (the model writes one annotation per sample), 'stratified' (choose N from a pool "
        "to cover) or 'given' (each sample's annotation drawn from given plans, e.g. the SFT data's)",
    )
    anchor_pool: int = f(4, "stratified: annotations drawn per sample wanted, to choose from", min=1)
    backend: Literal["transformers", "vllm"] = f(
        "transformers", "'transformers' (generate() here) or 'vllm' (pip install anchorlm[vllm])"
    )
    vllm_args: dict[str, Any] = f(
        {}, "backend 'vllm': keyword arguments for vllm.LLM (tensor_parallel_size, dtype, max_model_len, ...)"
    )
    guidance_scale: float = f(
        0.0, "anchored: anchor guidance g, logits l(y|x,z) + g (l(y|x,z) - l(y|x)); 0 = none"
    )
    forced_topics: list[str] = f(
        [], "anchor fidelity: topics forced as the annotation's start (topic:<t>); [] = none"
    )
    forced_samples: int = f(2, "anchor fidelity: samples per prompt and forced topic", min=1)
    precision: Precision = f("auto", PRECISION_HELP)

    @model_validator(mode="after")
    def _check(self):
        if not self.seeds:
            raise ValueError("sample.seeds must list at least one seed")
        bad = [t for t in self.forced_topics if parse_tags(f"topic:{t}") is None]
        if bad:
            raise ValueError(
                f"sample.forced_topics: {bad} cannot be annotation values (letters, digits, _.'&+-)"
            )
        return self


class EvaluateConfig(Section):
    embedder: str = f("minilm", "'minilm' (packaged all-MiniLM-L6-v2) or a sentence-transformers dir")
    reference_lm: str = f("smollm2", "'smollm2' (packaged) or a local causal LM dir, for fluency NLL")
    fluency_max_per_variant: int = f(128, "responses per variant scored for fluency (0 = all)", min=0)
    content_nll_per_prompt: int = f(
        0, "responses per prompt and sampling seed scored for content NLL (0 = all; fewer: cheaper, noisier)", min=0
    )
    classifier_docs_per_category: int = f(
        120, "corpus docs per category to train the attribute classifier", min=2
    )
    strip_style: bool = f(True, "remove the SFT style opener/closer before diversity metrics")
    max_words: int = f(
        0, "compare at most this many words of each response (0 = all), so length differs less", min=0
    )
    bootstrap: int = f(1000, "bootstrap resamples over prompts for confidence intervals", min=0)
    seed: int = f(0, "seed for the bootstrap and the classifier")
    precision: Precision = f("auto", PRECISION_HELP + " (fluency scoring)")


class StagesConfig(Section):
    """Every stage's section: what a stage command (`anchorlm annotate`, `... sample`) and the demo
    read from a recipe."""

    out_dir: str = f("runs/demo", "where every stage writes its output directory")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig, description="the corpus")
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig, description="stage 1")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="stage 2")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="stage 4")
    sft_data: SFTDataConfig = Field(default_factory=SFTDataConfig, description="the SFT data")
    posttrain: PosttrainConfig = Field(default_factory=PosttrainConfig, description="stage 5")
    sample: SampleConfig = Field(default_factory=SampleConfig, description="stage 6")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="stage 7")
    variants: list[str] = f(
        ["base", "sft", "aat", "annotated"],
        "the variants `anchorlm demo` samples and compares (anchorlm.variants; base, sft and aat give "
        "the summary figures)",
    )

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in REGISTRY]
        if bad:
            raise ValueError(f"variants: unknown {bad}; known: {sorted(REGISTRY)}")
        return v

    @field_validator("out_dir")
    @classmethod
    def _out(cls, v: str) -> str:
        check_out_dir(v, "out_dir")
        return v
