import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from anchorlm.annotators.keywords import KeywordAnnotator, style_of
from anchorlm.annotators.llm import LLMAnnotator, parse_answer
from anchorlm.annotators.metadata import MetadataAnnotator
from anchorlm.config import LLMAnnotatorConfig
from anchorlm.format import parse_tags


def test_metadata_annotator_uses_fields():
    a = MetadataAnnotator({"topic": "category", "domain": "source"})
    assert a.annotate([({"category": "men-women", "source": "fortunes"}, "x"), ({}, "y")]) == [
        ["topic:men-women", "domain:fortunes"],
        [],
    ]


def test_keyword_annotator_picks_distinctive_words():
    docs = [{"text": t} for t in ["the cat sat", "the dog ran", "the cat ate", "a bird sang"] * 3]
    docs += [{"text": "telescope telescope moon"}] * 3
    a = KeywordAnnotator(k=1)
    a.fit(docs, "text")
    tags = a.annotate([({}, "The telescope saw the moon and the telescope saw Jupiter.")])[0]
    assert tags[0] == "keyword:telescope"
    assert "entity:Jupiter" in tags and all(parse_tags(t) for t in tags)
    assert style_of("Q: why?\nA: because.") == "dialogue"
    assert style_of("Nothing is certain.\n\t\t-- Someone") == "quotation"


def test_parse_answer_accepts_tags_and_rejects_prose():
    assert parse_answer("topic:food, entity:Paris\nmore text") == ["topic:food", "entity:Paris"]
    assert parse_answer("Topic: food style:recipe") == ["topic:food", "style:recipe"]
    assert parse_answer("Sure! Here are some tags for you.") is None
    assert parse_answer("topic:food colour:red") is None


class _Server(BaseHTTPRequestHandler):
    """A real OpenAI-compatible endpoint on loopback: fails once, answers badly once, then well."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(body)
        status, content = self.script.pop(0) if self.script else (200, "topic:default")
        if status != 200:
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    srv = HTTPServer(("127.0.0.1", 0), _Server)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


def test_openai_backend_retries_errors_and_malformed_answers(server):
    _Server.seen = []
    _Server.script = [(503, ""), (200, "I think this text is about food."), (200, "topic:food entity:Bread")]
    cfg = LLMAnnotatorConfig(
        backend="openai",
        base_url=f"http://127.0.0.1:{server.server_port}/v1",
        model="test-model",
        concurrency=1,
        max_retries=3,
    )
    a = LLMAnnotator(cfg)
    assert a.annotate([({}, "Bread and butter.")]) == [["topic:food", "entity:Bread"]]
    assert len(_Server.seen) == 3 and _Server.seen[0]["model"] == "test-model"
    assert _Server.seen[0]["messages"][-1] == {"role": "user", "content": "Text: Bread and butter."}
    assert a.failures == 0
    _Server.script = [(200, "nope")] * 2
    a2 = LLMAnnotator(LLMAnnotatorConfig(backend="openai", base_url=cfg.base_url, max_retries=1))
    assert a2.annotate([({}, "x")]) == [[]] and a2.failures == 1


def test_openai_backend_runs_requests_concurrently(server):
    _Server.script = []
    cfg = LLMAnnotatorConfig(
        backend="openai", base_url=f"http://127.0.0.1:{server.server_port}/v1", concurrency=4
    )
    assert LLMAnnotator(cfg).annotate([({}, str(i)) for i in range(10)]) == [["topic:default"]] * 10


def test_local_transformers_backend_with_packaged_smollm2():
    a = LLMAnnotator(
        LLMAnnotatorConfig(
            backend="transformers", model="smollm2", batch_size=2, max_new_tokens=24, max_retries=1
        )
    )
    out = a.annotate(
        [
            ({}, "The telescope showed four moons circling Jupiter."),
            ({}, "Bread, butter and a little salt make a fine supper."),
        ]
    )
    assert len(out) == 2 and a.failures == sum(t == [] for t in out)
    # the 135M model does not always keep the format; the few-shot prompt gets it to at least once
    assert a.failures < 2
    for tags in out:
        assert tags == [] or (parse_tags(" ".join(tags)) == tags and tags[0].startswith("topic:"))


def test_annotators_combine_in_order_without_repeats():
    from anchorlm.annotators import annotate_all

    first = MetadataAnnotator({"topic": "category"})
    second = MetadataAnnotator({"topic": "category", "domain": "source"})
    items = [({"category": "food", "source": "fortunes"}, "x")]
    assert annotate_all([first, second], items) == [["topic:food", "domain:fortunes"]]
