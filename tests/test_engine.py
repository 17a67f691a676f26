"""anchorlm.engine, the decode loop, against references that run one unpadded sequence at a time.

Tiny random models (a Llama with grouped-query attention and a preallocated cache, a GPT-2 with a
growing one), so every check runs in seconds."""

import numpy as np
import pytest
import torch

from anchorlm.engine import Settings, draw, generate, row_key, uniforms

OPEN, CLOSE, EOS, PAD = 96, 97, 98, 0
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19], [5, 6, 7, 8, 9], [3, 4]]


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return _llama() if request.param == "llama" else _gpt2()


def _argmax_decode(model, prompt, n, stop):
    ids = list(prompt)
    while len(ids) - len(prompt) < n:
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt in stop:
            return ids[len(prompt) :], nxt
        ids.append(nxt)
    return ids[len(prompt) :], None


def test_greedy_equals_one_sequence_at_a_time(model):
    """Left padding, shared prompts, rows leaving the batch: none changes what is decoded."""
    s = Settings(temperature=0, max_new_tokens=12, stop=(EOS, 41), compact_at=0.01)
    outs = generate(model, PROMPTS, [row_key(i) for i in range(len(PROMPTS))], s, PAD)
    for p, o in zip(PROMPTS, outs):
        assert (o.response, o.stop) == _argmax_decode(model, p, 12, (EOS, 41))


def test_generate_tells_glibc_to_keep_freed_memory(model, monkeypatch):
    """Each decode step allocates its logits and the draw's passes over them afresh: `generate`
    calls `keep_freed_memory` (anchorlm/allocator.py; what it does: tests/test_training.py), so
    `anchorlm sample` and a resumed study's sampling reuse them as training does."""
    from anchorlm import engine

    told = []
    monkeypatch.setattr(engine, "keep_freed_memory", lambda: told.append(1) or True)
    generate(model, PROMPTS[:1], [row_key(0)], Settings(temperature=0, max_new_tokens=2), PAD)
    assert told


def test_anchored_in_one_pass_equals_annotation_then_response(model):
    """One loop (annotation closed by the model, by EOS or by force after 4 tokens) gives the rows
    that two calls give: the annotation first, then the response after prompt + annotation + close,
    each row continuing its own random stream."""
    prompts = [p + [OPEN] for p in PROMPTS] * 4
    keys = [row_key("r", i) for i in range(len(prompts))]
    one = generate(
        model, prompts, keys, Settings(max_new_tokens=10, stop=(EOS,), annotation=(4, CLOSE, (EOS,))), PAD
    )
    ann = generate(model, prompts, keys, Settings(max_new_tokens=4, stop=(CLOSE, EOS)), PAD)
    seqs = [p + a.response + [CLOSE] for p, a in zip(prompts, ann)]
    used = [len(a.response) + (a.stop is not None) for a in ann]
    two = generate(model, seqs, keys, Settings(max_new_tokens=10, stop=(EOS,)), PAD, counters=used)
    for o, a, r in zip(one, ann, two):
        assert (o.annotation, o.annotation_stop) == (a.response, a.stop)
        assert (o.response, o.stop) == (r.response, r.stop)
    assert any(o.annotation_stop is None for o in one)  # some were closed by force


def test_rows_do_not_depend_on_their_batch(model):
    s = Settings(max_new_tokens=10, stop=(EOS,), annotation=(4, CLOSE, (EOS,)))
    prompts = [p + [OPEN] for p in PROMPTS]
    keys = [row_key(i) for i in range(len(prompts))]
    whole = generate(model, prompts, keys, s, PAD)
    for i in range(len(prompts)):
        alone = generate(model, [prompts[i]], [keys[i]], s, PAD)[0]
        assert (alone.annotation, alone.response) == (whole[i].annotation, whole[i].response)
    other = generate(model, prompts, [row_key("other", i) for i in range(len(prompts))], s, PAD)
    assert [o.response for o in other] != [o.response for o in whole]


def test_guidance_zero_is_plain_anchored_sampling_token_for_token(model):
    prompts = [p + [OPEN] for p in PROMPTS] * 3
    keys = [row_key(i) for i in range(len(prompts))]
    s = Settings(max_new_tokens=10, stop=(EOS,), annotation=(4, CLOSE, (EOS,)))
    plain = generate(model, prompts, keys, s, PAD)
    uncond = [p[:-1] for p in prompts]
    g0 = generate(model, prompts, keys, Settings(**{**s.__dict__, "guidance_scale": 0.0}), PAD, uncond=uncond)
    assert [(o.annotation, o.response) for o in g0] == [(o.annotation, o.response) for o in plain]
    g3 = generate(model, prompts, keys, Settings(**{**s.__dict__, "guidance_scale": 3.0}), PAD, uncond=uncond)
    assert [o.annotation for o in g3] == [o.annotation for o in plain]  # guidance acts on responses only
    assert [o.response for o in g3] != [o.response for o in plain]


def test_guided_greedy_follows_the_mixed_logits(model):
    """Greedy guided decoding against a brute-force reference: each response token is the argmax of
    l_c + g (l_c - l_u), with l_c after prompt + annotation and l_u after the prompt alone, both
    computed one unpadded sequence at a time."""
    g = 2.0
    prompts = [p + [OPEN] for p in PROMPTS]
    uncond = [p[:-1] for p in prompts]
    s = Settings(
        temperature=0, max_new_tokens=6, stop=(EOS,), annotation=(3, CLOSE, (EOS,)), guidance_scale=g
    )
    outs = generate(model, prompts, [0] * len(prompts), s, PAD, uncond=uncond)
    for p, u, o in zip(prompts, uncond, outs):
        cond = p + o.annotation + [CLOSE]
        resp = []
        for _ in range(6):
            with torch.no_grad():
                lc = model(torch.tensor([cond + resp])).logits[0, -1]
                lu = model(torch.tensor([u + resp])).logits[0, -1]
            t = int((lc + g * (lc - lu)).argmax())
            if t == EOS:
                break
            resp.append(t)
        assert o.response == resp


def test_draws_follow_the_softmax_and_stay_in_the_nucleus():
    """3000 draws from one row of logits: a chi-square test against softmax(l / T) (p > 0.001), and
    with top_p nothing outside the nucleus, the nucleus renormalised. The same test rejects draws
    at the wrong temperature, so it can fail."""
    from scipy.stats import chisquare

    torch.manual_seed(1)
    logits = torch.randn(1, 12) * 2
    n = 3000
    u = uniforms(np.full(n, 12345, dtype=np.uint64), np.arange(n))
    for temp, top_p in ((0.8, 1.0), (1.0, 0.7)):
        tok = draw(logits.expand(n, -1), temp, top_p, u).numpy()
        p = torch.softmax(logits[0].double() / temp, -1).numpy()
        order = np.argsort(-p)
        nucleus = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)] if top_p < 1 else order
        assert set(tok) <= set(nucleus)
        expect = np.zeros_like(p)
        expect[nucleus] = p[nucleus] / p[nucleus].sum()
        counts = np.bincount(tok, minlength=12)[nucleus]
        assert chisquare(counts, expect[nucleus] * n).pvalue > 0.001
        wrong = torch.softmax(logits[0].double() / (temp * 2), -1).numpy()[nucleus]
        assert chisquare(counts, wrong / wrong.sum() * n).pvalue < 1e-6


def test_uniforms_are_uniform_and_counter_based():
    from scipy.stats import kstest

    u = uniforms(np.arange(5000, dtype=np.uint64), np.zeros(5000, dtype=np.int64))
    assert kstest(u, "uniform").pvalue > 0.001 and (0 <= u).all() and (u < 1).all()
    again = uniforms(np.array([7], dtype=np.uint64), np.array([3]))
    assert again[0] == uniforms(np.array([7, 7], dtype=np.uint64), np.array([2, 3]))[1]


def _full_sort_draw(logits, temperature, top_p, u):
    """The reference: the whole vocabulary sorted (descending, ties by token id), the nucleus cut,
    an inverse-CDF draw over it."""
    p = torch.softmax(logits.double() / temperature, -1)
    out = []
    for row, x in zip(p, u):
        order = sorted(range(len(row)), key=lambda i: (-float(row[i]), i))
        vals = row[order]
        keep = (torch.cumsum(vals, 0) - vals) < top_p
        vals = vals * keep
        c = torch.cumsum(vals, 0)
        out.append(order[min(int(torch.searchsorted(c, x * c[-1], right=True)), len(order) - 1)])
    return out


@pytest.mark.parametrize("top_p", [0.5, 0.95, 0.999])
def test_top_p_from_candidates_equals_the_whole_vocabulary_sorted(monkeypatch, top_p):
    """The nucleus found among the tokens above a probability floor (high floors here, so that rows
    fall back to the next floor and to the whole sort too) draws what sorting the whole vocabulary
    draws, ties included (logits rounded to bfloat16, as a bf16 model gives them, share values)."""
    import anchorlm.draw

    monkeypatch.setattr(anchorlm.draw, "NUCLEUS_FLOORS", (0.1, 0.02))
    torch.manual_seed(2)
    logits = (torch.randn(64, 300) * torch.linspace(0.5, 6, 64)[:, None]).bfloat16().float()
    u = uniforms(np.arange(64, dtype=np.uint64), np.zeros(64, dtype=np.int64))
    got = draw(logits, 1.0, top_p, u).tolist()
    assert got == _full_sort_draw(logits, 1.0, top_p, u)


def test_top_p_where_the_candidates_mass_is_exactly_top_p(monkeypatch):
    """Rows whose tokens above the first probability floor carry exactly top_p in float32, where
    the whole sort's next token has less than top_p before it (its running sum rounds otherwise),
    each in a batch beside a row with more candidates (so its own are padded): each draws what the
    whole vocabulary sorted in float32 draws, and what it draws alone, for u across [0, 1) and
    near 1."""
    import math

    import anchorlm.draw

    floor = math.log(anchorlm.draw.NUCLEUS_FLOORS[0])
    us = np.concatenate([np.linspace(0, 1, 300, endpoint=False), 1 - np.logspace(-3, -16, 30)])
    cases = []
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        row = torch.cat(
            [torch.randn(1, 200, generator=g) * 1.5 + 4, torch.randn(1, 1800, generator=g) * 0.1 + 0.3], -1
        )
        lse = torch.logsumexp(row, -1, keepdim=True)
        p = torch.exp(torch.sort(row[0], descending=True).values - lse[0])
        n = int((row >= lse + floor).sum())
        top_p = float(p[:n].cumsum(-1)[-1])  # the candidates' float32 total
        if float((p.cumsum(-1) - p)[n]) < top_p:  # the whole sort keeps token n in the nucleus
            cases.append((row, top_p))
    assert len(cases) >= 3
    for row, top_p in cases[:3]:
        batch = torch.cat([row, torch.zeros(1, 2000)])  # all 2000 tokens of row 2 are candidates
        got = [draw(batch, 1.0, top_p, np.array([x, 0.5]))[0].item() for x in us]
        alone = [draw(row, 1.0, top_p, np.array([x]))[0].item() for x in us]
        with monkeypatch.context() as m:
            m.setattr(anchorlm.draw, "NUCLEUS_FLOORS", ())
            whole = [draw(batch, 1.0, top_p, np.array([x, 0.5]))[0].item() for x in us]
        assert got == alone == whole


def test_a_uniform_that_rounds_to_one_draws_the_nucleus_last_token():
    """u x the nucleus's mass rounds up to the mass itself where u is within 2^-25 of 1 (float32):
    the draw is then the nucleus's last token, not a token after the nucleus."""
    logits = torch.tensor([[4.0, 3.0, 2.0] + [0.0] * 61])
    u = np.array([1 - 2**-53])
    for top_p in (0.5, 0.9):  # a nucleus of 2 tokens; of 3 and most of the zeros
        p = torch.softmax(logits[0].double(), -1)
        order = sorted(range(64), key=lambda i: (-float(p[i]), i))
        size = int(((torch.cumsum(p[order], 0) - p[order]) < top_p).sum())
        assert draw(logits, 1.0, top_p, u).item() == order[size - 1]
    # a top_p that rounds to 1 keeps tokens of probability 0 in the nucleus: never drawn either
    blocked = torch.cat([torch.zeros(1, 40), torch.full((1, 10), float("-inf"))], -1)
    assert draw(blocked, 1.0, 0.99999999, u).item() == 39


def test_a_tiny_temperature_draws_the_most_likely_token_not_nan():
    """At T = 1e-30 logits / T overflows; the draw divides the logits less their row's maximum, so
    it gives the argmax (top_p < 1 and = 1 alike) and never a NaN's arbitrary token."""
    torch.manual_seed(2)
    logits = torch.randn(64, 50) * 3
    u = uniforms(np.full(64, 7, dtype=np.uint64), np.arange(64))
    for top_p in (0.9, 1.0):
        assert torch.equal(draw(logits, 1e-30, top_p, u), logits.argmax(-1))


def test_attention_reads_only_the_cache_columns_written(monkeypatch):
    """The preallocated cache hands attention the columns written so far (the prompt, then one more
    each step), not its whole length: a step's attention costs what the tokens so far cost, and an
    anchored call does not pay for its annotation cap on every token."""
    from anchorlm.engine import _Batch

    model = _llama()
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(k.shape[-2])
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    b = _Batch(model, [PROMPTS[0], PROMPTS[1]], 2, PAD, 40)
    assert b.cache.layers[0].get_max_length() == 4 + 40  # preallocated for the whole call
    for _ in range(3):
        b.step()
    layers = model.config.num_hidden_layers
    assert seen == [4] * layers + [5] * layers + [6] * layers + [7] * layers


def test_trim_drops_the_columns_no_row_left_reads_and_a_longer_prompt_still_joins(model, monkeypatch):
    """A batch that lives on while rows join and leave (the server's) drops the columns left of
    every remaining row's first real input, whichever row that is; a prompt longer than the columns
    left then moves them back right to join. The steps' logits are those of the same batch
    untrimmed (to rounding: attention sums over other columns), the joined row's first ones those
    of its prompt run alone, and the cache has the room it gained."""
    from anchorlm.engine import _Batch

    long = list(range(20, 32))  # a head of 11 tokens: more columns than the trimmed batch has

    def run(trim: bool):
        b = _Batch(model, [PROMPTS[1], PROMPTS[2], PROMPTS[0]], 3, PAD, 40)  # heads of 1, 7 and 4 tokens
        out, dropped, live = [], 0, [0, 1, 2]
        for step in range(8):
            logits = b.step()
            out.append(logits[b.index(b.at[live])])
            for r in live:
                b.feed(r, int(logits[b.at[r]].argmax()))
            if step == 2:  # row 1 (the longest prompt, the leftmost columns) leaves
                live = [0, 2]
                b.compact(np.array([False if r == 1 else True for r in range(len(b.at))]), 0.25)
                if trim:
                    room = b.room()
                    dropped = b.trim(least=1)
                    assert b.room() == room + dropped
            if step == 3:
                assert b.can_join([long], 4)
                live = live + b.join(model, [long], PAD)
        return out, dropped, b

    kept, none, _ = run(trim=False)
    trimmed, dropped, b = run(trim=True)
    assert none == 0 and dropped == 3  # row 2's prompt head starts 3 columns after row 1's (row 0's: 6)
    assert b.cache.layers[0].filled == b.t
    for want, got in zip(kept, trimmed):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([long])).logits[0, -1]
    torch.testing.assert_close(trimmed[4][-1], alone, atol=1e-5, rtol=1e-5)
    assert b.trim(least=1) == 0  # nothing left of the remaining rows' first inputs

    from transformers import DynamicCache

    monkeypatch.setattr("anchorlm.engine.preallocated", lambda model, length: DynamicCache())
    b = _Batch(model, [PROMPTS[1], PROMPTS[2], PROMPTS[0]], 3, PAD, 40)
    b.step()
    b.compact(np.array([True, False, True]), 0.25)
    assert b.trim(least=1) == 0 and b.t == 7 + 1  # a growing cache is left as it is
    assert not b.can_join([long], 4)  # and a longer prompt waits for the columns
