"""Prepacked products (`anchorlm/prepack.py`): in bf16 the same samples and logits as without, on
SmolLM2, with the packed kernel actually used; in fp32 logits within rounding and greedy decoding
still transformers' `generate` token for token; back to `F.linear` when a weight or bias changes or
a gradient is wanted; nothing packed where it does not apply or where the products disagree."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from anchorlm import prepack as pp
from anchorlm.engine import Settings, generate, row_key
from anchorlm.format import encode_prompt, eos_id
from anchorlm.models import load_model

needs_bf16 = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="this CPU's oneDNN does not multiply bf16: no bf16 weight is prepacked here",
)
needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN: nothing is prepacked"
)
DTYPES = [pytest.param(torch.bfloat16, marks=needs_bf16, id="bf16"),
          pytest.param(torch.float32, marks=needs_onednn, id="fp32")]  # fmt: skip


def _layer(n_in=96, n_out=40, dt=torch.bfloat16):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(n_in, n_out)).to(dt)


@pytest.fixture
def small_fp32(monkeypatch):
    """The small test layers packed in fp32 too (below FP32_MIN_WEIGHT they are left to MKL)."""
    monkeypatch.setattr(pp, "FP32_MIN_WEIGHT", 0)


def _packed_calls(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


@needs_bf16
def test_smollm2_samples_the_same_tokens_and_logits_prepacked(monkeypatch):
    """SmolLM2-135M in bf16, packed: the engine draws the same tokens, row for row, as from the model
    as it comes, through the packed kernel; a prefill's logits (another row count than the batch)
    are equal bit for bit; layers of one weight shape share one check; undo gives every layer its own
    forward back."""
    model, tok = load_model("smollm2", tokens="turns")
    model.to(torch.bfloat16)
    seqs = [encode_prompt(tok, p) for p in ("Tell me about the sea.", "Name a colour.", "Write a haiku.")] * 4
    keys = [row_key("prepack", i) for i in range(len(seqs))]
    s = Settings(temperature=0.8, top_p=0.95, max_new_tokens=20, stop=(eos_id(tok),))
    ids = torch.tensor([seqs[0]] * 3)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    plain = generate(model, seqs, keys, s, tok.pad_token_id)
    monkeypatch.setattr(pp, "_AGREES", {})
    n, undo = pp.prepack(model, batch=len(seqs))
    assert n > 2 * model.config.num_hidden_layers
    assert len(pp._AGREES) == 5  # one check for each weight shape, not one for each of the layers
    assert "forward" in vars(model.lm_head)
    packed = []
    assert _packed_calls(lambda: packed.extend(generate(model, seqs, keys, s, tok.pad_token_id))) > 100
    assert [o.response for o in packed] == [o.response for o in plain]
    assert sum(len(o.response) for o in plain) > 3 * len(seqs)  # they wrote something
    with torch.no_grad():
        model(input_ids=ids)  # the first call at this shape checks it against F.linear
        assert _packed_calls(lambda: torch.equal(model(input_ids=ids).logits, logits)) > 0
        assert torch.equal(model(input_ids=ids).logits, logits)
    undo()
    assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.parametrize("dt", DTYPES)
def test_a_packed_layer_goes_back_to_f_linear_when_it_must(dt, small_fp32):
    """Each case on a freshly packed layer, bf16 and fp32: an in-place change, a new weight, a new
    bias, a cast to the other dtype (and back) and a wanted gradient all give F.linear's result with
    the layer's current parameters; a deep copy whose weight is changed follows its own weight."""
    x = torch.randn(5, 96).to(dt)
    other = torch.float32 if dt == torch.bfloat16 else torch.bfloat16

    def fresh():
        net = _layer(dt=dt)
        assert pp.prepack(net, batch=8)[0] == 1
        with torch.no_grad():
            net(x), net(x)  # checked at 5 rows, then packed
            assert _packed_calls(lambda: net(x)) == 1
        return net, net[0]

    changes = {
        "in place": lambda lin: lin.weight.mul_(2),
        "new weight": lambda lin: setattr(lin, "weight", torch.nn.Parameter(torch.randn_like(lin.weight))),
        "new bias": lambda lin: setattr(lin, "bias", torch.nn.Parameter(torch.randn_like(lin.bias))),
        ".data": lambda lin: setattr(lin.weight, "data", torch.randn_like(lin.weight)),
    }
    for name, change in changes.items():
        net, lin = fresh()
        with torch.no_grad():
            change(lin)
            assert torch.equal(net(x), F.linear(x, lin.weight, lin.bias)), name
            assert _packed_calls(lambda net=net: net(x)) == 0, name
    net, lin = fresh()
    net.to(other)
    with torch.no_grad():
        assert torch.equal(net(x.to(other)), F.linear(x.to(other), lin.weight, lin.bias))
        net.to(dt)  # back: the weights rounded through `other`, in new storage
        assert torch.equal(net(x), F.linear(x, lin.weight, lin.bias))
        assert _packed_calls(lambda: net(x)) == 0
    net, lin = fresh()
    y = net(x)  # grad mode, a weight that wants a gradient
    assert torch.equal(y, F.linear(x, lin.weight, lin.bias))
    y.float().sum().backward()
    assert lin.weight.grad is not None and lin.bias.grad is not None
    net, lin = fresh()
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin[0].weight.mul_(3)
        assert torch.equal(twin(x), F.linear(x, twin[0].weight, twin[0].bias))
        got, want = net(x), F.linear(x, lin.weight, lin.bias)  # the original, still packed
        assert _packed_calls(lambda: net(x)) == 1
        if dt == torch.bfloat16:
            assert torch.equal(got, want)
        else:
            assert (got - want).abs().max() <= pp.FP32_TOLERANCE * want.abs().max()


@pytest.mark.parametrize("dt", DTYPES)
def test_a_product_that_differs_is_not_used(monkeypatch, dt, small_fp32):
    """Where the packed product differs from F.linear's on the probe rows the layer is not packed;
    where it differs at a later row count, that row count gets F.linear's product; an input without
    rows gets F.linear's (empty) product."""
    real = pp.packed_product
    monkeypatch.setattr(pp, "_AGREES", {})  # nothing known yet about these shapes
    monkeypatch.setattr(pp, "packed_product", lambda x, p, b: real(x, p, b) * 1.5)
    net = _layer(dt=dt)
    assert pp.prepack(net, batch=8)[0] == 0
    monkeypatch.setattr(pp, "_AGREES", {})
    monkeypatch.setattr(pp, "packed_product", lambda x, p, b: real(x, p, b) * (1.5 if len(x) == 3 else 1))
    assert pp.prepack(net, batch=8)[0] == 1
    x = torch.randn(3, 96).to(dt)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(net(x), F.linear(x, net[0].weight, net[0].bias))
        assert net(torch.randn(0, 96).to(dt)).shape == (0, 40)


@needs_onednn
def test_smollm2_in_fp32_packed_within_rounding_and_greedy_equals_generate(monkeypatch):
    """SmolLM2-135M in fp32, packed: oneDNN's products instead of MKL's, so a prefill's logits move by
    rounding only (not bit for bit), and the engine's greedy decode, left-padded in one batch, is
    still transformers' `generate(do_sample=False)` token for token (the issue's guarantee); with
    `fp32=False` nothing is packed."""
    model, tok = load_model("smollm2", tokens="turns")
    assert pp.prepack(model, fp32=False)[0] == 0 and not pp.supported(model, fp32=False)
    big = sum(
        m.weight.numel() >= pp.FP32_MIN_WEIGHT for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    prompts = [
        "Tell me about the sea.",
        "Write one line about a cat.",
        "What is bread made of? Answer briefly.",
    ]
    seqs = [encode_prompt(tok, p) for p in prompts]
    ids = torch.tensor([seqs[0]] * 3)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    monkeypatch.setattr(pp, "_AGREES", {})
    n, undo = pp.prepack(model, batch=len(seqs))
    assert n == big > 2 * model.config.num_hidden_layers  # the small k and v products left to MKL
    assert "forward" not in vars(model.model.layers[0].self_attn.k_proj)
    with torch.no_grad():
        model(input_ids=ids)  # the first call at this shape checks it against F.linear
        assert _packed_calls(lambda: model(input_ids=ids)) > 0
        packed = model(input_ids=ids).logits
    assert (packed - logits).abs().max() < 1e-4 * logits.abs().max()  # oneDNN's sums: within rounding
    stop = eos_id(tok)
    s = Settings(temperature=0, max_new_tokens=24, stop=(stop,))
    outs = []
    assert (
        _packed_calls(
            lambda: outs.extend(generate(model, seqs, [row_key(i) for i in range(3)], s, tok.pad_token_id))
        )
        > 100
    )
    undo()
    assert not any("forward" in vars(m) for m in model.modules())
    for q, o in zip(seqs, outs):
        with torch.no_grad():
            ref = model.generate(torch.tensor([q]), attention_mask=torch.ones(1, len(q), dtype=torch.long),
                                 do_sample=False, max_new_tokens=24, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)[0, len(q):].tolist()  # fmt: skip
        assert o.response + ([o.stop] if o.stop is not None else []) == ref


@needs_onednn
def test_fp32_products_are_checked_with_a_tolerance(monkeypatch):
    """fp32: a layer is packed when its product is F.linear's within FP32_TOLERANCE (equal or not)
    and then gives the packed product; one off by more than that is not packed; fp32=False packs
    nothing, and nor does a weight below FP32_MIN_WEIGHT elements (MKL is faster there)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(96, 40))
    lin = net[0]
    assert pp.prepack(net)[0] == 0 and "forward" not in vars(lin)  # 3,840 elements: left to MKL
    monkeypatch.setattr(pp, "FP32_MIN_WEIGHT", 96 * 40)
    assert pp.prepack(net, fp32=False)[0] == 0 and "forward" not in vars(lin)
    monkeypatch.setattr(pp, "_AGREES", {})
    n, undo = pp.prepack(net, batch=8)
    assert n == 1 and pp.supported(net)
    with torch.no_grad():
        net(torch.randn(5, 96))  # checked at 5 rows on a probe
        x = torch.randn(5, 96)  # then another input of that shape: packed
        assert _packed_calls(lambda: net(x)) == 1
        want = F.linear(x, lin.weight, lin.bias)
        assert (net(x) - want).abs().max() <= pp.FP32_TOLERANCE * want.abs().max()
    undo()
    real = pp.packed_product
    for factor, packs in ((1 + 0.1 * pp.FP32_TOLERANCE, 1), (1 + 10 * pp.FP32_TOLERANCE, 0)):
        monkeypatch.setattr(pp, "_AGREES", {})
        monkeypatch.setattr(pp, "packed_product", lambda x, p, b, f=factor: real(x, p, b) * f)
        n, undo = pp.prepack(net, batch=8)
        assert n == packs, factor
        with torch.no_grad():
            want, got = F.linear(x, lin.weight, lin.bias), net(x)
            if packs:  # the packed product: not F.linear's, within the tolerance
                assert (
                    not torch.equal(got, want)
                    and (got - want).abs().max() <= pp.FP32_TOLERANCE * want.abs().max()
                )
            else:
                assert torch.equal(got, want)
        undo()


_TWO_THREADS = r"""
import json, sys, torch
import torch.nn.functional as F
from anchorlm import prepack as pp
torch.set_num_threads(2)
pp.FP32_MIN_WEIGHT = 0
dt = getattr(torch, sys.argv[1])
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(576, 1536)).to(dt)
n, undo = pp.prepack(m, batch=96)
rows = []
with torch.no_grad():
    for r in (96, 7, 96):  # the batch, another row count (checked when first met), the batch again
        x = torch.randn(r, 576).to(dt)
        got, want = m(x).float(), F.linear(x, m[0].weight, m[0].bias).float()
        rows.append([torch.equal(got, want), (got - want).abs().max().item(), want.abs().max().item()])
print(json.dumps({"packed": n, "thread_counts": sorted({k[-1] for k in pp._AGREES}), "rows": rows,
                  "all_agree": all(pp._AGREES.values())}))
"""


@pytest.mark.parametrize("dt", DTYPES)
def test_products_at_two_threads_are_checked_at_two_threads(dt):
    """The suite's workers run torch at one thread each; a user's `anchorlm sample` runs at all its
    cores, where oneDNN splits a product otherwise. In a process at 2 threads: each shape is
    checked at 2 threads, and inputs other than the check's seeded probe still give F.linear's
    products (bf16 bit for bit, fp32 within the tolerance): a summation order that depends on the
    threads and shapes, not on the values."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    name = "bfloat16" if dt == torch.bfloat16 else "float32"
    out = subprocess.run([sys.executable, "-c", _TWO_THREADS, name], capture_output=True, text=True, env=env,
                         check=True)  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # every shape checked at 2 threads, and packed there (not a fall-back to F.linear that equals itself)
    assert r["packed"] == 1 and r["thread_counts"] == [2] and r["all_agree"], r
    for equal, gap, scale in r["rows"]:
        assert equal if dt == torch.bfloat16 else gap <= pp.FP32_TOLERANCE * scale, r
