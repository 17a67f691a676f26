"""LoRA through `peft`: low-rank adapters on the model's linear layers, plus the anchor tokens'
embedding rows, trained while every other weight stays frozen; merged into the model when training
ends, so every later stage loads a plain model.

Why the anchor tokens: `<|ann|>` and `<|/ann|>` are new rows that a published model has never
seen; frozen at their stand-in initialisation the model could not learn to open or close an
annotation. peft's `trainable_token_indices` trains those rows alone (tied output rows included).
"""

from __future__ import annotations

import functools

from anchorlm.format import ANN_CLOSE, ANN_OPEN, ASSISTANT, USER


def anchor_token_ids(tok) -> list[int]:
    """Ids of anchorlm's own tokens that this tokenizer holds."""
    vocab = tok.get_vocab()
    return sorted(vocab[t] for t in (ANN_OPEN, ANN_CLOSE, USER, ASSISTANT) if t in vocab)


def apply_lora(model, tok, rank: int, alpha: float = 32.0, dropout: float = 0.0, targets="all-linear"):
    """`model` wrapped by peft with rank-`rank` adapters on `targets` (peft's 'all-linear': every
    linear layer but the output layer) and the anchor tokens' embedding rows trainable, the tied
    output layer's rows trained by their gradient alone (`_train_rows_cheaply`)."""
    model = peft_lora(model, tok, rank, alpha, dropout, targets)
    _train_rows_cheaply(model)
    return model


def peft_lora(model, tok, rank: int, alpha: float = 32.0, dropout: float = 0.0, targets="all-linear"):
    """`apply_lora` with peft's own trainable-token layer throughout (the reference the tests and
    benchmarks/lora_rows.py compare with)."""
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


def _train_rows_cheaply(model) -> None:
    """Make the anchor rows of a tied output layer cost what their rows cost.

    peft's trainable-token layer builds the merged weight W (a copy with the trained rows put in)
    and computes ``linear(x, W)`` with W in the graph, so every backward pass computes the gradient
    of the whole 49k x d output matrix (as much work as the output layer's forward: 8.7% of the
    FLOPs of a LoRA step on SmolLM2 at 8 x 256, docs/benchmarks-lora-rows.json) to keep its 2 to 4
    rows. Here the output layer reads the same W, detached, and the rows get their gradient from a
    term that is exactly zero in the forward pass, ``linear(x.detach(), delta) - itself.detach()``
    added to their columns: the logits are those of peft's layer bit for bit, the input's gradient
    is the same computation, and the rows' gradient is ``g[:, rows]^T x`` instead of a slice of
    ``g^T x`` (the same sum, in another order). The embedding side is peft's own. The layer's class
    is swapped for a subclass (a bound method would not follow the module into replicas), and any
    case but one active, unmerged adapter over a frozen output matrix is left to peft. Tested
    against peft's layer in tests/test_training.py."""
    import torch
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    for m in model.modules():
        if isinstance(m, TrainableTokensLayer) and isinstance(m.base_layer, torch.nn.Linear):
            m.__class__ = _cheap_rows_class()


@functools.cache
def _cheap_rows_class():
    import torch
    import torch.nn.functional as F
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    class CheapRowsTrainableTokensLayer(TrainableTokensLayer):
        def forward(self, x, *args, **kwargs):
            active = self.active_adapters
            if (
                self.disable_adapters
                or self.merged
                or len(active) != 1
                or self.base_layer.weight.requires_grad
                or not hasattr(self, "get_merged_weights")
            ):
                return super().forward(x, *args, **kwargs)
            name = active[0]
            with torch.no_grad():
                W = self.get_merged_weights(active)
            out = F.linear(x, W)
            delta = self.trainable_tokens_delta[name]
            rows = torch.tensor(self.token_indices[name], device=out.device)
            zero = F.linear(x.detach(), delta.to(W.dtype))
            return out.index_add_(-1, rows, (zero - zero.detach()).to(out.dtype))

    CheapRowsTrainableTokensLayer.__module__ = __name__  # pickled by name: see __getattr__
    CheapRowsTrainableTokensLayer.__qualname__ = "CheapRowsTrainableTokensLayer"
    return CheapRowsTrainableTokensLayer


def __getattr__(name: str):
    """The layer class by name (made on first use, so that importing this module needs no peft)."""
    if name == "CheapRowsTrainableTokensLayer":
        return _cheap_rows_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
