import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from anchorlm.metrics.quality import fluency_nll, mean_finite


def test_fluency_nll_matches_the_models_own_loss(tiny_tokenizer):
    """Batched, padded scoring equals the model's unpadded cross-entropy, text by text, in the order
    given (the batches are made in order of length)."""
    tok = tiny_tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    texts = ["A short one.", "A somewhat longer text, with more tokens in it than the first.", "", "x"]
    widths = []

    def recording(**kw):  # the model, noting how wide each batch is padded
        widths.append(kw["input_ids"].shape[1])
        return model(**kw)

    got = fluency_nll(texts, recording, tok, batch_size=2)
    lengths = sorted(1 + len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert widths == [lengths[1], lengths[3]]  # batched in order of length: "" and x, then the rest
    assert math.isnan(got[2])  # an empty text has no token to score
    for text, nll in zip(texts, got):
        if not text:
            continue
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ref = model(input_ids=ids, labels=ids).loss.item()
        assert math.isclose(nll, ref, rel_tol=1e-4), (text, nll, ref)


def test_mean_finite_ignores_nan():
    assert mean_finite([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(mean_finite([float("nan")]))
