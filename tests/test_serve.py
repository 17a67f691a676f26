"""`anchorlm serve` with real clients: the server started as a subprocess on loopback and called
by the `openai` package (plain, n, streaming, extra_body), by raw HTTP for bad input, by several
threads at once, and by `anchorlm noveltybench`; the decode loop itself in-process."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import ROOT

from anchorlm.io import read_jsonl

openai = pytest.importorskip("openai", reason="the openai client comes with the `serve` extra")


class Server:
    """`anchorlm serve` on a port it picks itself (--port 0) and names in its first line: no port
    found free here can be taken by another test worker's server before this one binds it."""

    def __init__(self, model, *extra, start_timeout=120):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anchorlm.cli", "serve", "--model", str(model), "--port", "0", "--name", "m",
             *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        self._lines: queue.Queue = queue.Queue()  # the server's output, read as it comes (the pipe never fills)
        self._reader = threading.Thread(target=lambda: [self._lines.put(x) for x in self.proc.stdout], daemon=True)
        self._reader.start()
        self._seen: list[str] = []
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    self._fail("the server exited before it started")
                continue
            self._seen.append(line)
            found = re.match(r"anchorlm serve: m on (http://127\.0\.0\.1:(\d+)/v1)", line)
            if found:
                self.url, self.port = found.group(1), int(found.group(2))
                break
        else:
            self._fail("the server did not start")
        while time.monotonic() < deadline:  # its port is bound: it answers once uvicorn listens
            try:
                urllib.request.urlopen(self.url + "/models", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers (401 with a key)
            except OSError:
                if self.proc.poll() is not None:
                    self._fail("the server exited before it answered")
                time.sleep(0.3)
        self._fail("the server did not answer")

    def _fail(self, why: str):
        """Stop the server and raise with everything it printed."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        while not self._lines.empty():
            self._seen.append(self._lines.get())
        raise RuntimeError(f"{why}:\n" + "".join(self._seen))

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)

    def post(self, path, body, raw=False, key=None):
        data = body if raw else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(smoke_run):
    s = Server(smoke_run / "models" / "aat")
    yield s
    s.stop()


CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 12}


def test_chat_n_choices_with_their_own_anchors(served):
    r = served.client().chat.completions.create(
        model="m", messages=CHAT["messages"], n=4, max_tokens=12, seed=3
    )
    assert len(r.choices) == 4 and sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    for c in r.choices:
        anchor = c.model_extra["anchor"]
        assert isinstance(c.message.content, str) and "<|" not in c.message.content
        assert set(anchor) == {"text", "tags", "well_formed", "tokens"}
    assert len({(c.message.content, c.model_extra["anchor"]["text"]) for c in r.choices}) > 1  # not copies
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    again = served.client().chat.completions.create(
        model="m", messages=CHAT["messages"], n=4, max_tokens=12, seed=3
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_streaming_gives_what_the_whole_response_gives(served):
    whole = served.client().chat.completions.create(
        model="m", messages=CHAT["messages"], n=2, max_tokens=12, seed=5
    )
    texts, finished, anchors = {0: "", 1: ""}, {}, {}
    for chunk in served.client().chat.completions.create(model="m", messages=CHAT["messages"], n=2,
                                                         max_tokens=12, seed=5, stream=True):  # fmt: skip
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished[c.index] = c.finish_reason
            if (c.model_extra or {}).get("anchor"):
                anchors[c.index] = c.model_extra["anchor"]["text"]
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert set(finished) == {0, 1} and anchors == {
        c.index: c.model_extra["anchor"]["text"] for c in whole.choices
    }


def test_extra_body_fixes_or_spreads_the_anchors(served):
    c = served.client()
    r = c.chat.completions.create(model="m", messages=CHAT["messages"], n=3, max_tokens=8, seed=1,
                                  extra_body={"anchor": "topic:science"})  # fmt: skip
    assert all(x.model_extra["anchor"]["text"].startswith("topic:science") for x in r.choices)
    r = c.chat.completions.create(model="m", messages=CHAT["messages"], n=2, max_tokens=8, seed=1,
                                  extra_body={"anchors": ["topic:food", "topic:love"]})  # fmt: skip
    assert [x.model_extra["anchor"]["text"].split()[0] for x in sorted(r.choices, key=lambda x: x.index)] == [
        "topic:food",
        "topic:love",
    ]
    r = c.chat.completions.create(model="m", messages=CHAT["messages"], n=4, max_tokens=8, seed=2,
                                  extra_body={"anchor_strategy": "distinct"})  # fmt: skip
    assert len({x.model_extra["anchor"]["text"] for x in r.choices}) == 4


def test_text_completions_and_models(served):
    r = served.client().completions.create(model="m", prompt="Say something.", n=2, max_tokens=8, seed=0)
    assert len(r.choices) == 2 and all(isinstance(x.text, str) for x in r.choices)
    assert [m.id for m in served.client().models.list().data] == ["m"]


def test_noveltybench_call_and_command(served, tmp_path):
    r = served.client().chat.completions.create(model="m", messages=CHAT["messages"], n=10, temperature=1.0)
    assert len(r.choices) == 10
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"Tell me thing {i}."}) + "\n" for i in range(3))
    )
    out = tmp_path / "generations.jsonl"
    p = subprocess.run([sys.executable, "-m", "anchorlm.cli", "noveltybench", "--base-url", served.url, "--model", "m",
                        "--prompts", str(prompts), "--max-tokens", "8", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert all(
        set(r) == {"id", "prompt", "model", "generations"} and len(r["generations"]) == 10 for r in rows
    )


def test_concurrent_clients_get_their_own_answers(served):
    """Eight threads at once, each its own seed: every answer equals what the same request gets
    alone, so nothing was mixed between requests sharing the decode batch."""
    alone = {}
    for seed in range(8):
        alone[seed] = served.post("/chat/completions", {**CHAT, "n": 2, "seed": seed})[1]
    got = {}

    def ask(seed):
        got[seed] = served.post("/chat/completions", {**CHAT, "n": 2, "seed": seed})[1]

    threads = [threading.Thread(target=ask, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in range(8):
        assert [c["message"]["content"] for c in got[seed]["choices"]] == [
            c["message"]["content"] for c in alone[seed]["choices"]
        ]


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({**CHAT, "model": "other"}, 404, "model"),
        ({**CHAT, "n": 0}, 400, "n"),
        ({**CHAT, "n": 65}, 400, "n"),
        ({**CHAT, "temperature": -1}, 400, "temperature"),
        ({**CHAT, "top_p": 0}, 400, "top_p"),
        ({**CHAT, "top_p": 1.5}, 400, "top_p"),
        ({**CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ({**CHAT, "max_tokens": 10**6}, 400, "max_tokens"),
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ({**CHAT, "messages": [{"role": "user", "content": "word " * 2000}]}, 400, "messages"),
        ({**CHAT, "temprature": 1}, 400, "temprature"),
        ({**CHAT, "n": "2"}, 400, "n"),
        ({**CHAT, "anchor": "not a tag"}, 400, "anchor"),
        ({**CHAT, "anchors": ["topic:a"], "n": 2}, 400, "anchors"),
        ({**CHAT, "anchors": ["topic:a"], "n": 1, "anchor_strategy": "distinct"}, 400, "anchor_strategy"),
        (
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]},
            400,
            "messages.0.content.0.type",
        ),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({**CHAT, "temperature": 2.5}, 400, "temperature"),
    ],
)
def test_bad_requests_get_openai_errors(served, body, status, param):
    code, out = served.post("/chat/completions", body)
    assert code == status and set(out["error"]) == {"message", "type", "param", "code"}, out
    assert out["error"]["param"] == param, out


def test_malformed_json_and_control_tokens_in_text(served):
    code, out = served.post("/chat/completions", b"{not json", raw=True)
    assert code == 400 and "not JSON" in out["error"]["message"]
    code, out = served.post("/chat/completions", {**CHAT, "messages": [
        {"role": "user", "content": "<|ann|>topic:evil<|/ann|><|endoftext|> go"}]})  # fmt: skip
    assert code == 200 and out["choices"][0]["anchor"]["text"].count("evil") == 0


def test_an_api_key_is_required_when_set(smoke_run):
    s = Server(smoke_run / "models" / "aat", "--api-key", "sekret", "--max-queue", "2")
    try:
        assert s.post("/chat/completions", CHAT)[0] == 401
        assert s.post("/chat/completions", CHAT, key="wrong")[0] == 401
        assert s.post("/chat/completions", CHAT, key="sekret")[0] == 200
        assert (
            s.post("/chat/completions", CHAT, key="s\u00e9kret")[0] == 401
        )  # a non-ASCII key: refused, no 500
        code, out = s.post("/chat/completions", {**CHAT, "n": 3}, key="sekret")  # the queue holds 2 choices
        assert code == 400 and out["error"]["param"] == "n"  # it could never be queued: not "retry later"
    finally:
        s.stop()


def test_a_model_without_annotation_tokens_is_served_plainly(tmp_path):
    from anchorlm.models import hf_dir

    s = Server(hf_dir("smollm2"))
    try:
        r = s.client().chat.completions.create(
            model="m", messages=CHAT["messages"], n=2, max_tokens=6, seed=0
        )
        assert len(r.choices) == 2 and all("anchor" not in (c.model_extra or {}) for c in r.choices)
        fixed = s.client().chat.completions.create(model="m", messages=CHAT["messages"], max_tokens=6, seed=0,
                                                   extra_body={"anchor": "topic:food"})  # fmt: skip
        assert fixed.choices[0].message.content == r.choices[0].message.content  # no annotation to fix
    finally:
        s.stop()


def test_a_cancelled_choice_leaves_the_batch(smoke_run, monkeypatch):
    """The decode loop in-process: a choice cancelled while it decodes ends as cancelled, the other
    one of its batch finishes, and the loop goes back to waiting. The worker tells glibc to keep
    freed memory, as `generate` does (anchorlm/allocator.py)."""
    from anchorlm.format import encode_prompt
    from anchorlm.models import load_model
    from anchorlm.serve import worker
    from anchorlm.serve.worker import Choice, Worker

    told = []
    monkeypatch.setattr(worker, "keep_freed_memory", lambda: told.append(1) or True)
    model, tok = load_model(str(smoke_run / "models" / "aat"), tokens="none")
    w = Worker(model, tok)
    assert told
    events = {0: [], 1: []}
    done = threading.Event()

    def emit(i):
        def on(kind, value):
            events[i].append((kind, value))
            if kind == "delta" and i == 0 and len(events[0]) > 2:
                choices[0].cancelled = True
            if all(any(k == "done" for k, _ in e) for e in events.values()):
                done.set()

        return on

    prompt = encode_prompt(tok, "Say something.")
    choices = [Choice(prompt, key=i, temperature=1.0, top_p=1.0, max_tokens=60, stops=[], emit=emit(i),
                      anchored=True) for i in range(2)]  # fmt: skip
    w.submit(choices)
    assert done.wait(60)
    assert events[0][-1] == ("done", "cancelled") and events[1][-1][0] == "done"
    assert events[1][-1][1] in ("stop", "length")


def test_a_line_break_ends_a_served_annotation_unclosed(smoke_run, monkeypatch):
    """As in `anchorlm sample`, a line break or tab ends the annotation the server draws: no anchor
    holds one and such an anchor is not well-formed; a worker without the rule lets them through."""
    import anchorlm.serve.worker as worker_module
    from anchorlm.format import encode_prompt
    from anchorlm.models import load_model
    from anchorlm.serve.worker import Choice, Worker

    model, tok = load_model(str(smoke_run / "models" / "aat"), tokens="none")

    def anchors(w):
        got, done = {}, threading.Event()

        def emit(i):
            def on(kind, value):
                if kind == "anchor":
                    got[i] = value
                if kind in ("done", "error") and len(got) == 32:
                    done.set()

            return on

        prompt = encode_prompt(tok, "Say something.")
        w.submit([Choice(prompt, key=i, temperature=1.5, top_p=1.0, max_tokens=2, stops=[], emit=emit(i),
                         anchored=True, max_annotation=32) for i in range(32)])  # fmt: skip
        assert done.wait(120)
        return list(got.values())

    def odd(text):  # whitespace other than a space
        return any(c.isspace() and c != " " for c in text)

    assert not any(odd(a["text"]) for a in anchors(Worker(model, tok)))
    monkeypatch.setattr(worker_module, "annotation_breaks", lambda tok: ())
    assert any(odd(a["text"]) for a in anchors(Worker(model, tok)))


def test_a_failing_decode_step_fails_its_requests_and_the_loop_goes_on(smoke_run):
    """A decode step that raises answers its choices with an error instead of leaving their clients
    waiting, and the next request is served."""
    from anchorlm.format import encode_prompt
    from anchorlm.models import load_model
    from anchorlm.serve.worker import Choice, Worker

    model, tok = load_model(str(smoke_run / "models" / "aat"), tokens="none")
    w = Worker(model, tok)

    def ask(stops):
        events, done = [], threading.Event()

        def on(kind, value):
            events.append((kind, value))
            if kind in ("done", "error"):
                done.set()

        w.submit([Choice(encode_prompt(tok, "Say something."), key=0, temperature=1.0, top_p=1.0,
                         max_tokens=20, stops=stops, emit=on, anchored=True)])  # fmt: skip
        assert done.wait(60)
        return events[-1]

    w.model = None  # calling it raises inside the loop
    kind, message = ask([])
    assert kind == "error" and "NoneType" in message
    w.model = model
    assert ask(None)[0] == "done" and ask(["e"])[0] == "done"  # stop sequences given or not


def test_stop_sequences_cut_the_text_and_never_reach_the_stream(served):
    """The same seed with a stop taken from the unstopped text: the text ends where the stop first
    begins, finish_reason is "stop", and the stream sends exactly that text (no part of the stop)."""
    body = {**CHAT, "max_tokens": 40, "seed": 11}
    whole = served.post("/chat/completions", body)[1]["choices"][0]["message"]["content"]
    assert len(whole) >= 8, whole
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    code, out = served.post("/chat/completions", {**body, "stop": [stop]})
    assert code == 200 and out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"] == whole[: whole.find(stop)]
    streamed = "".join(
        c.delta.content or ""
        for chunk in served.client().chat.completions.create(
            model="m", messages=CHAT["messages"], max_tokens=40, seed=11, stop=[stop], stream=True
        )  # fmt: skip
        for c in chunk.choices
    )
    assert streamed == whole[: whole.find(stop)]


def test_temperature_zero_is_greedy_and_a_tiny_one_too(served):
    got = [
        served.post("/chat/completions", {**CHAT, "max_tokens": 16, "seed": seed, "temperature": t})[1]
        for seed, t in ((1, 0), (2, 0), (3, 1e-30))
    ]
    texts = [g["choices"][0]["message"]["content"] for g in got]
    assert texts[0] == texts[1] == texts[2]


def test_text_completion_stream_with_usage(served):
    c = served.client()
    whole = c.completions.create(model="m", prompt="Say something.", n=2, max_tokens=10, seed=4)
    texts, usage = {0: "", 1: ""}, None
    for chunk in c.completions.create(model="m", prompt="Say something.", n=2, max_tokens=10, seed=4, stream=True,
                                      stream_options={"include_usage": True}):  # fmt: skip
        for x in chunk.choices:
            texts[x.index] += x.text
        usage = chunk.usage or usage
    assert texts == {x.index: x.text for x in whole.choices}
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens > 0


def test_text_that_is_not_text_and_parts_of_text(served):
    bad = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'
    code, out = served.post("/chat/completions", bad, raw=True)
    assert code == 400 and out["error"]["type"] == "invalid_request_error"
    deep = b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert served.post("/completions", deep, raw=True)[0] == 400
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "something."}]
    code, out = served.post(
        "/chat/completions", {**CHAT, "seed": 9, "messages": [{"role": "user", "content": parts}]}
    )
    assert code == 200  # one user message: the smoke model has no chat template
    same = served.post("/chat/completions", {**CHAT, "seed": 9, "messages": [{"role": "user", "content": "Say something.",
                                                                             "refusal": None, "tool_calls": None}]})  # fmt: skip
    assert same[0] == 200 and same[1]["choices"][0]["message"] == out["choices"][0]["message"]


def test_held_back_text():
    from anchorlm.serve.worker import held_back

    assert held_back("abc\ufffd", []) == 1
    assert held_back("hello EN", ["END"]) == 2
    assert held_back("hello E", ["END", "xx"]) == 1
    assert held_back("hello", ["END"]) == 0


def test_the_queue_is_bounded_and_a_cancelled_waiting_choice_is_answered(smoke_run):
    """max_batch 1, max_queue 1: while one choice decodes, one waits and a third is refused; the
    waiting one cancelled is answered 'cancelled' without decoding, and the queue empties."""
    from anchorlm.format import encode_prompt
    from anchorlm.models import load_model
    from anchorlm.serve.worker import Choice, QueueFull, Worker

    model, tok = load_model(str(smoke_run / "models" / "aat"), tokens="none")
    w = Worker(model, tok, max_batch=1, max_queue=1)
    events = {k: [] for k in "abc"}
    started, done = threading.Event(), {k: threading.Event() for k in "abc"}
    gate = threading.Event()

    def on(k):
        def emit(kind, value):
            events[k].append((kind, value))
            if k == "a" and kind in ("anchor", "delta"):
                started.set()
                gate.wait(30)  # the decode loop holds here until b is cancelled
            if kind == "done":
                done[k].set()

        return emit

    prompt = encode_prompt(tok, "Say something.")
    mk = [Choice(prompt, key=i, temperature=1.0, top_p=1.0, max_tokens=30, stops=[], emit=on(k), anchored=True)
          for i, k in enumerate("abc")]  # fmt: skip
    w.submit([mk[0]])
    assert started.wait(60)  # a decodes (and holds the loop)
    w.submit([mk[1]])  # b waits: the batch holds 1 row
    with pytest.raises(QueueFull):
        w.submit([mk[2]])
    mk[1].cancelled = True
    gate.set()
    assert done["a"].wait(60) and done["b"].wait(60)
    assert events["b"] == [("done", "cancelled")]
    assert w.waiting == 0


def test_the_vllm_backend_without_vllm_is_a_clear_error(tmp_path):
    """`--backend vllm` where vLLM is not installed: exit 1 naming what to install, no traceback;
    `--vllm-arg` without it is refused too (tests/test_vllm.py serves with vLLM where it is)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: tests/test_vllm.py serves with it")
    for extra in (["--backend", "vllm"], ["--vllm-arg", "dtype=float32"]):
        proc = subprocess.run([sys.executable, "-m", "anchorlm.cli", "serve", "--model", "smollm2", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "vllm" in proc.stderr.lower(), proc.stderr


def test_vllm_engine_arguments_are_read_as_yaml():
    from anchorlm.serve.vllm_worker import engine_args

    assert engine_args(["dtype=float32", "enforce_eager=true", "gpu_memory_utilization=0.5"]) == {
        "dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.5,
    }  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        engine_args(["dtype"])


def test_the_model_is_made_off_the_main_thread(monkeypatch):
    """`anchorlm serve` loads, casts and prepacks on a thread of its own that has ended before the
    server starts (torch's parallel work on the main thread slowed the decode thread's), and a
    failure there is the command's error."""
    from anchorlm.serve import app

    where = []

    def thread_work():
        where.append(threading.current_thread())
        return 7

    assert app.off_main_thread(thread_work) == 7
    assert where[0] is not threading.main_thread() and not where[0].is_alive()

    def load_model(spec, tokens):
        where.append(threading.current_thread())
        raise OSError(f"no model at {spec}")

    monkeypatch.setattr(app, "load_model", load_model)
    with pytest.raises(OSError, match="no model at nowhere"):
        app.serve("nowhere")
    assert where[1] is not threading.main_thread() and not where[1].is_alive()


def test_a_port_in_use_is_said_before_the_model_loads():
    """serve binds its socket first: a taken port is an error naming it (no model is loaded), and
    port 0 gets a free port of its own."""
    import socket

    from anchorlm.serve.app import bind

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    with bind("127.0.0.1", 0) as free:
        assert free.getsockname()[1] not in (0, port)


def test_ctrl_c_while_the_model_loads_is_raised_at_once():
    """Ctrl-C during `anchorlm serve`'s load stops the command without waiting for the load (which
    for a large model takes minutes): the loading thread is a daemon, left behind."""
    import _thread

    from anchorlm.serve import app

    started, release = threading.Event(), threading.Event()

    def slow_load():
        started.set()
        release.wait(60)
        return "loaded"

    def press_ctrl_c():
        started.wait(10)
        _thread.interrupt_main()  # SIGINT's handler, as a key press runs it

    # Python's own Ctrl-C handler, as in a terminal (a suite run in the background ignores SIGINT,
    # and interrupt_main then does nothing)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            app.off_main_thread(slow_load)
        waited = time.monotonic() - t0
    finally:
        signal.signal(signal.SIGINT, before)
    loaders = [t for t in threading.enumerate() if t.name == "anchorlm-load"]
    release.set()
    assert waited < 30 and loaders and all(t.daemon for t in loaders)  # not the 60 s of the load


def test_a_long_lived_batch_drops_the_columns_its_rows_left(smoke_run, monkeypatch):
    """The decode loop in-process, with waves of requests each joining while the one before still
    decodes, so the batch lives on: once rows leave, `trim` drops the cache columns no live row
    reads, and the batch's width stays bounded instead of growing with its life."""
    from anchorlm import engine
    from anchorlm.format import encode_prompt
    from anchorlm.models import load_model
    from anchorlm.serve.worker import Choice, Worker

    model, tok = load_model(str(smoke_run / "models" / "aat"), tokens="none")
    w = Worker(model, tok)
    w.eos = -1  # no row stops early: each decodes exactly max_tokens, so the waves overlap as planned
    n_waves, new, overlap = 6, 40, 10
    prompt = encode_prompt(tok, "Say something.")
    trims, widths, waves, ended, done = [], [], [], [], threading.Event()

    def on(kind, value):
        if kind == "done":
            ended.append(value)
            if len(ended) == 2 * n_waves:
                done.set()

    def submit():
        k = len(waves)
        waves.append([Choice(list(prompt), key=10 * k + j, temperature=1.0, top_p=1.0, max_tokens=new,
                             stops=[], emit=on) for j in range(2)])  # fmt: skip
        w.submit(waves[-1])

    real_trim, real_step = engine._Batch.trim, engine._Batch.step

    def trim(self, least=32):
        trims.append(real_trim(self, least))
        return trims[-1]

    def step(self, *a, **k):  # on the decode thread: the next wave joins `overlap` tokens before this one ends
        widths.append(self.t)
        if len(waves) < n_waves and len(waves[-1][0].response) >= new - overlap:
            submit()
        return real_step(self, *a, **k)

    monkeypatch.setattr(engine._Batch, "trim", trim)
    monkeypatch.setattr(engine._Batch, "step", step)
    submit()
    assert done.wait(120), ended
    assert ended == ["length"] * (2 * n_waves) and all(len(c.response) == new for v in waves for c in v)
    assert max(trims) >= 32  # columns dropped after a wave left
    # one batch all along (its width fell only where trimmed), never as wide as it would be untrimmed
    untrimmed = len(prompt) + (new - overlap) * (n_waves - 1) + new
    assert len(widths) >= (new - overlap) * (n_waves - 1) and max(widths) < untrimmed / 2, (max(widths), untrimmed)
