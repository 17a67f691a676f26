"""Prepacked bf16 products (`anchorlm/prepack.py`): the same samples as without, on SmolLM2; back
to `F.linear` when a weight changes or a gradient is needed; nothing packed where it does not apply."""

import pytest
import torch
import torch.nn.functional as F

from anchorlm.engine import Settings, generate, row_key
from anchorlm.format import encode_prompt, eos_id
from anchorlm.models import load_model
from anchorlm.prepack import prepack, supported

needs_bf16 = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="this CPU's oneDNN does not multiply bf16: nothing is prepacked here",
)


def _layer(n_in=96, n_out=40):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(n_in, n_out)).to(torch.bfloat16)


@needs_bf16
def test_smollm2_samples_the_same_tokens_prepacked():
    """Every linear layer of SmolLM2-135M in bf16 is packed (7 a block and the output layer), and
    the engine draws the same tokens from it, row for row, as from the model as it comes."""
    model, tok = load_model("smollm2", tokens="turns")
    model.to(torch.bfloat16)
    seqs = [encode_prompt(tok, p) for p in ("Tell me about the sea.", "Name a colour.", "Write a haiku.")] * 4
    keys = [row_key("prepack", i) for i in range(len(seqs))]
    s = Settings(temperature=0.8, top_p=0.95, max_new_tokens=20, stop=(eos_id(tok),))
    plain = generate(model, seqs, keys, s, tok.pad_token_id)
    n, undo = prepack(model, batch=len(seqs))
    assert n == 7 * model.config.num_hidden_layers + 1
    assert "forward" in vars(model.lm_head)
    packed = generate(model, seqs, keys, s, tok.pad_token_id)
    assert [o.response for o in packed] == [o.response for o in plain]
    assert sum(len(o.response) for o in plain) > 3 * len(seqs)  # they wrote something
    undo()
    assert "forward" not in vars(model.lm_head)


@needs_bf16
def test_a_changed_weight_or_a_gradient_goes_back_to_f_linear():
    """A packed layer gives F.linear's output; after its weight changes in place (an optimiser
    step) it gives the new weight's product, and with a gradient wanted it is differentiable."""
    net = _layer()
    lin = net[0]
    x = torch.randn(5, 96).to(torch.bfloat16)
    n, undo = prepack(net, batch=8)
    assert n == 1
    with torch.no_grad():
        assert torch.equal(net(x), F.linear(x, lin.weight, lin.bias))
        lin.weight.mul_(2)
        assert torch.equal(net(x), F.linear(x, lin.weight, lin.bias))
    y = net(x)
    assert y.requires_grad
    y.float().sum().backward()
    assert lin.weight.grad is not None
    with torch.no_grad():
        lin.weight = torch.nn.Parameter(torch.randn_like(lin.weight))
        assert torch.equal(net(x), F.linear(x, lin.weight, lin.bias))
    undo()


def test_nothing_is_packed_in_fp32():
    net = _layer().float()
    assert not supported(net)
    n, undo = prepack(net)
    assert n == 0 and "forward" not in vars(net[0])
    undo()
