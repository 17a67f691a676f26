"""LoRA through `peft`: low-rank adapters on the model's linear layers, plus the anchor tokens'
embedding rows, trained while every other weight stays frozen; merged into the model when training
ends, so every later stage loads a plain model.

Why the anchor tokens: `<|ann|>` and `<|/ann|>` are new rows that a published model has never
seen; frozen at their stand-in initialisation the model could not learn to open or close an
annotation. peft's `trainable_token_indices` trains those rows alone (tied output rows included).
"""

from __future__ import annotations

from anchorlm.format import ANN_CLOSE, ANN_OPEN, ASSISTANT, USER


def anchor_token_ids(tok) -> list[int]:
    """Ids of anchorlm's own tokens that this tokenizer holds."""
    vocab = tok.get_vocab()
    return sorted(vocab[t] for t in (ANN_OPEN, ANN_CLOSE, USER, ASSISTANT) if t in vocab)


def apply_lora(model, tok, rank: int, alpha: float = 32.0, dropout: float = 0.0, targets="all-linear"):
    """`model` wrapped by peft with rank-`rank` adapters on `targets` (peft's 'all-linear': every
    linear layer but the output layer) and the anchor tokens' embedding rows trainable."""
    from peft import LoraConfig, get_peft_model

    emb = model.get_input_embeddings()
    name = next(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is emb)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        trainable_token_indices={name: anchor_token_ids(tok)} if anchor_token_ids(tok) else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def merged(model):
    """The plain model with the adapters (and trained token rows) folded into its weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
