"""GEM loss against values and gradients worked out by hand, and in a real post-training run."""

import math

import pytest
import torch

from anchorlm.train.gem import IGNORE, gem_loss


def _one(logits, label, beta):
    """One scored token: position 0 predicts position 1 (labels are unshifted)."""
    z = torch.tensor([[logits, [0.0] * len(logits)]], requires_grad=True)
    y = torch.tensor([[IGNORE, label]])
    loss = gem_loss(z, y, beta)
    loss.backward()
    return loss.item(), z.grad[0, 0].tolist()


def test_gem_by_hand_beta_one():
    # z = [0, ln 3]: p = [1/4, 3/4]; beta = 1: q = p. Target 0:
    # loss = -sum_j q_j (log p_0 - log p_j) = -(3/4)(ln 1/4 - ln 3/4) = (3/4) ln 3
    # gradient = q - onehot(0) = [-3/4, 3/4], cross-entropy's gradient
    loss, grad = _one([0.0, math.log(3)], 0, 1.0)
    assert loss == pytest.approx(0.75 * math.log(3), abs=1e-6)
    assert grad == pytest.approx([-0.75, 0.75], abs=1e-6)


def test_gem_by_hand_beta_half():
    # beta = 1/2: q = softmax([0, 2 ln 3]) = [1/10, 9/10]
    # loss = -(9/10)(ln 1/4 - ln 3/4) = 0.9 ln 3; gradient = q - onehot(0) = [-0.9, 0.9]
    loss, grad = _one([0.0, math.log(3)], 0, 0.5)
    assert loss == pytest.approx(0.9 * math.log(3), abs=1e-6)
    assert grad == pytest.approx([-0.9, 0.9], abs=1e-6)


def test_gem_ignores_masked_positions_and_means_over_scored_tokens():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[0, :3] = IGNORE
    # by brute force: the per-token loss at each scored (shifted) position, averaged
    vals = []
    for b in range(2):
        for t in range(4):
            target = y[b, t + 1].item()
            if target == IGNORE:
                continue
            logp = torch.log_softmax(z[b, t], -1)
            q = torch.softmax(z[b, t] / 0.7, -1)
            vals.append(-(q * (logp[target] - logp)).sum().item())
    assert gem_loss(z, y, 0.7).item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    assert gem_loss(z, y, 0.7, num_items_in_batch=len(vals)).item() == pytest.approx(
        sum(vals) / len(vals), rel=1e-5
    )


@pytest.mark.learned
def test_gem_post_training_lowers_the_loss_and_keeps_more_entropy(tiny_tokenizer, tmp_path, precision):
    """A few GEM steps on a tiny model: the loss falls, and the next-token entropy at the SFT
    positions ends higher than after the same steps of cross-entropy."""
    from transformers import AutoModelForCausalLM

    from anchorlm.config import ModelConfig, PosttrainConfig
    from anchorlm.data.examples import build_example
    from anchorlm.train.model import build_model

    tok = tiny_tokenizer
    init = tmp_path / "init"
    build_model(
        ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok
    ).save_pretrained(init)
    tok.save_pretrained(init)
    examples = [
        {"instruction": "Tell me something.", "response": f"Answer number {i % 4}.", "tags": ["topic:work"]}
        for i in range(64)
    ]
    from anchorlm.train.posttrain import posttrain

    ent = {}
    for loss in ("ce", "gem"):
        cfg = PosttrainConfig(epochs=8, lr=0.01, batch_size=16, loss=loss, gem_beta=0.5, precision=precision)
        m = posttrain(cfg, init, examples, tmp_path / loss)
        assert m["counts"]["final_loss"] < m["counts"]["first_loss"]
        model = AutoModelForCausalLM.from_pretrained(tmp_path / loss).eval()
        row = build_example(tok, examples[0], "sft")
        ids = torch.tensor([row["input_ids"]])
        scored = torch.tensor(row["labels"][1:]) != IGNORE
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits[0, :-1][scored], -1)
        ent[loss] = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
    assert ent["gem"] > ent["ce"]
