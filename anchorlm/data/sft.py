"""Build the demo's post-training data: narrow relative to pretraining, as real SFT data is.

Responses are corpus texts from a small slice of categories (`sft_data.categories`), wrapped in a
fixed assistant style (the "preference" post-training should teach: an opener and a closer), each
answering one of a set of open-ended instructions. The instructions are split: most for training,
`n_eval_prompts` held out for evaluation. Every response is annotated by the same annotators, with
the same fitted state, as the pretraining corpus.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from anchorlm.annotators import annotate_all, load_annotators
from anchorlm.config import AnnotateConfig, CorpusConfig, SFTDataConfig, build, to_dict
from anchorlm.data.corpus import read_corpus
from anchorlm.data.style import style
from anchorlm.format import KEYS, parse_tags
from anchorlm.manifest import write_manifest

INSTRUCTIONS = """Tell me something.
Share a thought with me.
Say something memorable.
Give me a line to think about.
Write something short.
Surprise me.
What is on your mind?
Tell me anything you like.
Give me something to read.
Say something I can quote.
Share something you find interesting.
Tell me a little something.
Write a few lines for me.
Give me a saying.
Offer me a thought for the day.
Say whatever comes to mind.
Give me some words to remember.
Share a short piece of text.
Tell me something worth hearing.
Write me a short passage.
I am bored. Say something.
Can you share a line or two?
Give me something to ponder.
Say something clever.
Write anything at all.
What would you like to tell me?
Give me a small piece of wisdom or fun.
Share a snippet with me.
Tell me something new.
Brighten my day with a few words.
Give me a quote or a thought.
Say something, please.
Write a brief note.
Tell me what you are thinking.
Pass along something you have read.
Share a bit of text you like.
Give me something short to enjoy.
Offer a few words.
Tell me something, anything.
Write a line or two on any subject.
Amuse me with a few lines.
Say something thoughtful.
Give me some text, any kind.
Share whatever you want.
Say a few words about anything.
Tell me one thing.
Give me a passage to think over.
Write a little something for a friend.
Say something unexpected.
Share a line from anywhere.
Give me your favourite kind of sentence.
Tell me a thing I might not know.
Write whatever you feel like.
Give me a short reading.
Hand me a few words to carry today.
Let me hear something from you.
Offer me a line of text.
Say something to start a conversation.
Write a short bit of anything.
Give me a few words, your choice.
Share one short thing.
Tell me something I can repeat to others.
Say a line you like.
Write me a few words to begin the day.""".splitlines()


def build_sft_data(
    corpus: CorpusConfig,
    annotate: AnnotateConfig,
    annotate_dir: str | Path,
    cfg: SFTDataConfig,
    out_dir: str | Path,
) -> dict:
    """Write train.jsonl (instruction, response, tags) and eval_prompts.jsonl to `out_dir`.

    Responses come from the corpus that `annotate_dir` was annotated from, tagged by its annotators
    as they were configured and fitted there (`corpus` and `annotate` are used only for an
    annotation that does not record them)."""
    corpus, annotate = annotation_configs(annotate_dir, corpus, annotate)
    if cfg.n_eval_prompts >= len(INSTRUCTIONS) - 8:
        raise ValueError(
            f"sft_data.n_eval_prompts must leave at least 8 of {len(INSTRUCTIONS)} instructions for training"
        )
    rng = random.Random(cfg.seed)
    instructions = INSTRUCTIONS[:]
    rng.shuffle(instructions)
    eval_prompts, train_prompts = instructions[: cfg.n_eval_prompts], instructions[cfg.n_eval_prompts :]

    pool = [
        d
        for d in read_corpus(corpus)
        if d.get(corpus.category_field) in cfg.categories
        and len(d[corpus.text_field].strip()) <= cfg.max_response_chars
    ]
    if not pool:
        raise ValueError(
            f"no corpus documents of categories {cfg.categories} are at most "
            f"{cfg.max_response_chars} characters; change sft_data.categories"
        )
    annotators = load_annotators(annotate, annotate_dir)

    picks = [pool[rng.randrange(len(pool))] for _ in range(cfg.n_examples)]
    items = [(d, d[corpus.text_field].strip()) for d in picks]
    tags = annotate_all(annotators, items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w", encoding="utf-8") as fh:
        for (d, text), t in zip(items, tags):
            row = {
                "instruction": rng.choice(train_prompts),
                "response": style(cfg, text),
                "tags": t,
                "category": d.get(corpus.category_field),
                "source_id": d["id"],
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(out / "eval_prompts.jsonl", "w", encoding="utf-8") as fh:
        for i, p in enumerate(eval_prompts):
            fh.write(json.dumps({"id": i, "prompt": p}) + "\n")
    return write_manifest(
        out,
        "sft_data",
        to_dict(cfg),
        {"examples": len(items), "pool": len(pool), "eval_prompts": len(eval_prompts)},
    )


def annotation_configs(
    annotate_dir: str | Path, corpus: CorpusConfig, annotate: AnnotateConfig
) -> tuple[CorpusConfig, AnnotateConfig]:
    """The corpus and annotator configs an annotation run recorded in its manifest (its corpus file
    by absolute path), or the given ones for a run that recorded none."""
    m = Path(annotate_dir) / "manifest.json"
    if not m.exists():
        raise FileNotFoundError(f"{annotate_dir} has no finished annotation (run `anchorlm annotate` first)")
    cfg = json.loads(m.read_text()).get("config", {})
    if "corpus" not in cfg or "annotate" not in cfg:
        return corpus, annotate
    recorded = build(CorpusConfig, cfg["corpus"], "corpus")
    if cfg.get("corpus_file"):
        recorded.path = cfg["corpus_file"]
    return recorded, build(AnnotateConfig, cfg["annotate"], "annotate")


def check_examples(rows: list[dict], where: str = "SFT data", anchored: bool = True) -> None:
    """SFT rows as post-training needs them: a non-empty string `instruction` and `response`, and
    `tags`, a list of well-formed `key:value` tags of known keys (required for anchored
    post-training). A bad row raises ValueError naming it and the field."""
    if not rows:
        raise ValueError(f"{where}: no examples")
    for i, r in enumerate(rows, 1):
        for k in ("instruction", "response"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise ValueError(f"{where}: row {i}: '{k}' must be a non-empty string, not {r.get(k)!r}")
        tags = r.get("tags")
        if tags is None and not anchored:
            continue
        if not isinstance(tags, list) or (anchored and not tags) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}: row {i}: 'tags' must be a list of key:value strings, not {tags!r}")
        if tags and parse_tags(" ".join(tags)) is None:
            bad = [t for t in tags if parse_tags(t) is None]
            raise ValueError(
                f"{where}: row {i}: malformed tags {bad}; each is key:value with a key of {', '.join(KEYS)} "
                "and a value of letters, digits and _.'&+-"
            )
