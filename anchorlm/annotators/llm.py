"""An instruction-tuned LM writes the tags: a local `transformers` model, a vLLM engine, or an
OpenAI-compatible HTTP endpoint (vLLM, `transformers serve`, llama.cpp server, ...) with many
requests in flight, a rate limit, and retries (honouring Retry-After on 429 and 5xx).

Answers are parsed strictly; a malformed answer is retried (sampled, so the retry can differ) and,
after `max_retries`, the chunk gets no LLM tags and is counted in `failures`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from anchorlm.config import LLMAnnotatorConfig
from anchorlm.format import parse_tags
from anchorlm.models import hf_dir, load_model, load_tokenizer

SYSTEM = (
    "You label texts with 2 to 4 tags of the form key:value, on one line, separated by spaces. "
    "Keys: topic, entity, style, sentiment. Values use underscores instead of spaces. "
    "Answer with the tags only."
)
# Two worked examples: small instruct models (SmolLM2-135M) echo the text without them.
SHOTS = [
    (
        "Galileo pointed his telescope at Jupiter and saw four small moons.",
        "topic:astronomy entity:Galileo style:anecdote sentiment:neutral",
    ),
    (
        "I love rainy Sundays with a pot of tea and a good book.",
        "topic:leisure style:personal sentiment:positive",
    ),
]
PREFILL = "topic:"  # local models start their answer here, so the format is never in doubt
MAX_TEXT_CHARS = 600


def messages(text: str) -> list[dict]:
    """The chat: instructions, two worked examples, then the text to tag."""
    out = [{"role": "system", "content": SYSTEM}]
    for x, y in SHOTS:
        out += [{"role": "user", "content": "Text: " + x}, {"role": "assistant", "content": y}]
    return out + [{"role": "user", "content": "Text: " + text[:MAX_TEXT_CHARS]}]


def parse_answer(answer: str) -> list[str] | None:
    """Tags from an LLM answer (first non-empty line, commas allowed); None if malformed."""
    line = next((ln for ln in answer.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"[,;]", " ", line).strip().strip("`").strip()
    line = re.sub(r"\b([A-Za-z]+)\s*:\s*", lambda m: m.group(1).lower() + ":", line)
    return parse_tags(line)


class RateLimiter:
    """At most `rate` acquisitions per second over all threads: each caller is given the next free
    slot, 1/rate after the previous one, and sleeps until it. `rate` 0 never waits."""

    def __init__(self, rate: float, clock=time.monotonic, sleep=time.sleep):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self.next_free = -float("inf")
        self.lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a slot; returns the time it was granted for."""
        if not self.interval:
            return self.clock()
        with self.lock:
            slot = max(self.clock(), self.next_free)
            self.next_free = slot + self.interval
        wait = slot - self.clock()
        if wait > 0:
            self.sleep(wait)
        return slot


class LLMAnnotator:
    name = "llm"

    @classmethod
    def from_config(cls, cfg) -> LLMAnnotator:
        return cls(cfg.llm)

    def __init__(self, cfg: LLMAnnotatorConfig):
        self.cfg = cfg
        self.failures = 0
        self.retries = 0
        self.in_flight = self.max_in_flight = 0  # requests open at once, for the record
        self._count = threading.Lock()
        self._model = None
        self._limiter = RateLimiter(cfg.requests_per_second)

    def fit(self, docs, text_field):
        return {}

    def load_state(self, state):
        pass

    def annotate(self, items):
        prompts = [messages(text) for _, text in items]
        if self.cfg.backend == "openai":
            with ThreadPoolExecutor(self.cfg.concurrency) as pool:
                return list(pool.map(self._ask_http, prompts))
        if self.cfg.backend == "vllm":
            return self._ask_vllm(prompts)
        return self._ask_local(prompts)

    # --- OpenAI-compatible endpoint -------------------------------------------------------
    def _post(self, prompt: list[dict], temperature: float) -> str:
        body = json.dumps(
            {
                "model": self.cfg.model,
                "temperature": temperature,
                "max_tokens": self.cfg.max_new_tokens,
                "messages": prompt,
            }
        ).encode()
        req = urllib.request.Request(
            self.cfg.base_url.rstrip("/") + "/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.cfg.api_key}"},
        )
        self._limiter.acquire()
        with self._count:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:
                return json.loads(r.read())["choices"][0]["message"]["content"]
        finally:
            with self._count:
                self.in_flight -= 1

    def _ask_http(self, prompt: list[dict]) -> list[str]:
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            self.retries += attempt > 0
            try:
                tags = parse_answer(self._post(prompt, 0.0 if attempt == 0 else 0.7))
                if tags is not None:
                    return tags
                last = "malformed answer"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code not in (408, 429) and e.code < 500:
                    raise RuntimeError(f"{self.cfg.base_url}: {last}: {e.read()[:200]!r}") from e
                wait = float(e.headers.get("Retry-After") or 0.5 * 2**attempt)  # rate limit
                time.sleep(min(wait, 30.0))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(e)
                time.sleep(min(0.5 * 2**attempt, 30.0))
        self.failures += 1
        return []

    # --- in-process engines: greedy first, then sampled retries of the malformed answers -------
    def _ask_engine(self, prompts: list[list[dict]], answer) -> list[list[str]]:
        """`answer(texts, attempt)` returns the model's continuation of each chat text."""
        texts = [self._chat(p) for p in prompts]
        out: list[list[str] | None] = [None] * len(prompts)
        for attempt in range(self.cfg.max_retries + 1):
            todo = [i for i, t in enumerate(out) if t is None]
            if not todo:
                break
            for i, text in zip(todo, answer([texts[i] for i in todo], attempt)):
                out[i] = parse_answer(PREFILL + text)
        self.failures += sum(t is None for t in out)
        return [t or [] for t in out]

    def _ask_vllm(self, prompts: list[list[dict]]) -> list[list[str]]:
        """The local backend's prompts, prefill and retries, batched by a vLLM engine."""
        if self._model is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise ImportError("annotate.llm.backend 'vllm' needs `pip install anchorlm[vllm]`") from e
            path = hf_dir(self.cfg.model, self.cfg.gguf_file)  # vLLM reads no GGUF: dequantised once
            self._tok = load_tokenizer(path, tokens="none")
            self._model = LLM(model=path, tokenizer=path, **self.cfg.vllm_args)
        from vllm import SamplingParams

        def answer(texts, attempt):
            params = SamplingParams(
                temperature=0.7 if attempt else 0.0, max_tokens=self.cfg.max_new_tokens, seed=attempt
            )
            return [g.outputs[0].text for g in self._model.generate(texts, params, use_tqdm=False)]

        return self._ask_engine(prompts, answer)

    def _ask_local(self, prompts: list[list[dict]]) -> list[list[str]]:
        import torch

        if self._model is None:
            self._model, self._tok = load_model(self.cfg.model, "none", self.cfg.gguf_file)
            self._tok.padding_side = "left"
            if self._tok.pad_token is None:
                self._tok.pad_token = self._tok.eos_token

        def answer(texts, attempt):
            out = []
            for s in range(0, len(texts), self.cfg.batch_size):
                enc = self._tok(
                    texts[s : s + self.cfg.batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                )
                torch.manual_seed(attempt)
                with torch.no_grad():
                    gen = self._model.generate(
                        **enc,
                        max_new_tokens=self.cfg.max_new_tokens,
                        do_sample=attempt > 0,
                        temperature=0.7 if attempt else None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=self._tok.pad_token_id,
                    )
                out += [
                    self._tok.decode(row, skip_special_tokens=True)
                    for row in gen[:, enc["input_ids"].shape[1] :]
                ]
            return out

        return self._ask_engine(prompts, answer)

    def _chat(self, msgs: list[dict]) -> str:
        if self._tok.chat_template:
            text = self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in msgs[:-1]) + "\n\n" + msgs[-1]["content"] + "\nTags: "
        return text + PREFILL
