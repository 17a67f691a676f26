"""The one owner of the annotation format: special tokens, tags, rendering, parsing, stripping.

A document with per-chunk annotations renders as ``<z1> x1 <z2> x2 ...`` where each ``<z>`` is
``<|ann|>key:value key:value<|/ann|>``. Every special token starts with ``<|``; document text has
each ``<|`` turned into ``< |`` before it is rendered or tokenised, so text can never forge an
annotation (or any other control token), whatever it contains.
"""

from __future__ import annotations

import re

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ANN_OPEN = "<|ann|>"
ANN_CLOSE = "<|/ann|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SPECIAL_TOKENS = [EOS, PAD, ANN_OPEN, ANN_CLOSE, USER, ASSISTANT]

# The paper's keys, plus `keyword` for the offline content annotator.
KEYS = (
    "topic",
    "domain",
    "entity",
    "action",
    "location",
    "time",
    "sentiment",
    "style",
    "language",
    "keyword",
    "length",
)
# A value is letters or digits of any script, then those, `_` or `.'&+-`: never whitespace, `:`,
# `<`, `|` or `>`, so a tag can neither end an annotation nor start another.
_VALUE = r"[^\W_][\w.'&+-]*"
_TAG = re.compile(r"([a-z]+):(" + _VALUE + ")")
_NOT_A_SPACE = re.compile(r"[^\S ]")  # whitespace other than a space: no annotation holds it
_ANN_SPAN = re.compile(re.escape(ANN_OPEN) + r"(.*?)(?:" + re.escape(ANN_CLOSE) + r"|$)", re.S)


def sanitize(text: str) -> str:
    """Make document text unable to contain any special token (``<|`` becomes ``< |``)."""
    return text.replace("<|", "< |")


def make_tag(key: str, value: str) -> str:
    """Build one ``key:value`` tag; spaces in the value become ``_``, other unsafe characters go
    (letters and digits of every script stay: ``topic:日本語``)."""
    if key not in KEYS:
        raise ValueError(f"unknown annotation key {key!r}; expected one of {', '.join(KEYS)}")
    v = re.sub(r"\s+", "_", value.strip())
    v = re.sub(r"[^\w.'&+-]", "", v).strip("_.'&+-")
    if not v:
        raise ValueError(f"empty value for annotation key {key!r} (from {value!r})")
    return f"{key}:{v}"


def parse_tags(s: str) -> list[str] | None:
    """Parse ``key:value key:value``; None when anything in it is malformed or the key unknown."""
    parts = s.split()
    if not parts:
        return None
    for p in parts:
        m = _TAG.fullmatch(p)
        if not m or m.group(1) not in KEYS:
            return None
    return parts


def render_annotation(tags: list[str]) -> str:
    return ANN_OPEN + " ".join(tags) + ANN_CLOSE


def render(chunks: list[tuple[list[str], str]]) -> str:
    """Render annotated chunks as ``<z1> x1 <z2> x2 ...`` (chunks separated by a blank line)."""
    return "\n\n".join(render_annotation(tags) + sanitize(text) for tags, text in chunks)


def strip_annotations(text: str) -> str:
    """Remove every annotation span (an unclosed one runs to the end) from generated text."""
    return _ANN_SPAN.sub("", text).replace(ANN_CLOSE, "")


def annotation_breaks(tokenizer) -> tuple[int, ...]:
    """Ids of the tokens no annotation holds: those whose text has whitespace other than a space (a
    line break, a tab). An annotation is tags joined by single spaces, so a model that writes one of
    these has left its annotation without closing it; sampling ends the annotation there, as at its
    token cap, and the annotation counts as not closed by the model (malformed)."""
    special = set(tokenizer.all_special_ids)
    ids = [[i] for i in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's: 10x batch_decode's speed
    texts = backend.decode_batch(ids, skip_special_tokens=False) if backend else tokenizer.batch_decode(ids)
    return tuple(i for i, s in enumerate(texts) if i not in special and _NOT_A_SPACE.search(s))


def _ids(tokenizer, text: str) -> list[int]:
    # split_special_tokens: even unsanitised text is never matched against special tokens
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_annotation(tokenizer, tags: list[str]) -> tuple[list[int], list[bool]]:
    """Token ids of ``<|ann|>tags<|/ann|>`` and, per token, whether it belongs to a tag value.

    Keys (with their ``:`` and the separating space) and values are encoded as separate pieces,
    so the same ids are produced in pretraining and post-training and values can be masked alone.
    """
    t = tokenizer.convert_tokens_to_ids
    ids, is_value = [t(ANN_OPEN)], [False]
    for i, tag in enumerate(tags):
        key, value = tag.split(":", 1)
        k = _ids(tokenizer, (" " if i else "") + key + ":")
        v = _ids(tokenizer, value)
        ids += k + v
        is_value += [False] * len(k) + [True] * len(v)
    ids.append(t(ANN_CLOSE))
    is_value.append(False)
    return ids, is_value


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of document text, sanitised so no special token can appear."""
    return _ids(tokenizer, sanitize(text))


def encode_document(tokenizer, chunks: list[tuple[list[str], str]], annotated: bool) -> list[int]:
    """Ids of one document for pretraining: chunks (annotated or not), then EOS."""
    ids: list[int] = []
    for i, (tags, text) in enumerate(chunks):
        if annotated and tags:
            ids += encode_annotation(tokenizer, tags)[0]
        ids += encode_text(tokenizer, text + ("\n\n" if i < len(chunks) - 1 else ""))
    ids.append(eos_id(tokenizer))
    return ids


def eos_id(tokenizer) -> int:
    """The token that ends a document and a response: the tokenizer's EOS (ours: ``<|endoftext|>``;
    a chat model's: its end-of-turn token, e.g. SmolLM2's ``<|im_end|>``)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; anchorlm needs one to end documents and responses")
    return tokenizer.eos_token_id


_SLOT = "\u2063ANCHORLM_PROMPT\u2063"  # stands in for the instruction while the template renders


def _template_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Ids of the chat template's text before and after the user's message (cached on the
    tokenizer). The template's own text is tokenised with special tokens recognised; the
    instruction never is."""
    cached = getattr(tokenizer, "_anchorlm_template", None)
    if cached is None:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SLOT}], tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str) or text.count(_SLOT) != 1:
            raise ValueError("the tokenizer's chat template does not render the user message once")
        pre, post = text.split(_SLOT)
        enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
        cached = (enc(pre), enc(post))
        tokenizer._anchorlm_template = cached
    return cached


def encode_prompt(tokenizer, instruction: str) -> list[int]:
    """Ids of a prompt, ready for the assistant's turn: the model's chat template when it has one
    (e.g. ``<|im_start|>user\\ninstruction<|im_end|>\\n<|im_start|>assistant\\n``), otherwise ours,
    ``<|user|>instruction<|assistant|>``. The instruction is sanitised text either way."""
    if getattr(tokenizer, "chat_template", None):
        pre, post = _template_ids(tokenizer)
        return pre + encode_text(tokenizer, instruction) + post
    t = tokenizer.convert_tokens_to_ids
    return [t(USER)] + encode_text(tokenizer, instruction) + [t(ASSISTANT)]


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a conversation ready for the assistant's turn, by the model's chat template, every
    message's content sanitised text (a `<|ann|>` typed by a user stays text). A tokenizer without a
    chat template takes one user message, as `encode_prompt` renders it. A role the template cannot
    take raises ValueError."""
    if not getattr(tokenizer, "chat_template", None):
        if len(messages) != 1 or messages[0]["role"] != "user":
            raise ValueError("this model has no chat template: give one message of role 'user'")
        return encode_prompt(tokenizer, messages[0]["content"])
    slots = [f"\u2063ANCHORLM_MESSAGE_{i}\u2063" for i in range(len(messages))]
    try:
        text = tokenizer.apply_chat_template(
            [{"role": m["role"], "content": s} for m, s in zip(messages, slots)],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception as e:  # jinja raises what the template raises: an unknown role, an order it refuses
        raise ValueError(f"the model's chat template refuses these messages: {e}") from None
    if not isinstance(text, str) or any(text.count(s) != 1 for s in slots):
        raise ValueError("the model's chat template does not render every message once")
    ids: list[int] = []
    for m, s in zip(messages, slots):
        before, text = text.split(s, 1)
        if before:
            ids += tokenizer(before, add_special_tokens=False)["input_ids"]
        ids += encode_text(tokenizer, m["content"])
    if text:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
