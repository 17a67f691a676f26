"""An instruction-tuned LM writes the tags: a local `transformers` model or an OpenAI-compatible
HTTP endpoint (vLLM, llama.cpp server, ...). Answers are parsed strictly; a malformed answer is
retried (sampled, so the retry can differ) and, after `max_retries`, the chunk gets no LLM tags and
is counted in `failures`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from anchorlm.config import LLMAnnotatorConfig
from anchorlm.format import parse_tags

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


class LLMAnnotator:
    name = "llm"

    def __init__(self, cfg: LLMAnnotatorConfig):
        self.cfg = cfg
        self.failures = 0
        self._model = None

    def fit(self, docs, text_field):
        return {}

    def load_state(self, state):
        pass

    def annotate(self, items):
        prompts = [messages(text) for _, text in items]
        if self.cfg.backend == "openai":
            with ThreadPoolExecutor(self.cfg.concurrency) as pool:
                return list(pool.map(self._ask_http, prompts))
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
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]

    def _ask_http(self, prompt: list[dict]) -> list[str]:
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
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

    # --- local transformers model ---------------------------------------------------------
    def _ask_local(self, prompts: list[list[dict]]) -> list[list[str]]:
        import torch

        if self._model is None:
            from anchorlm.models import load_causal_lm

            self._model, self._tok = load_causal_lm(self.cfg.model, self.cfg.gguf_file)
            self._tok.padding_side = "left"
            if self._tok.pad_token is None:
                self._tok.pad_token = self._tok.eos_token
        out: list[list[str] | None] = [None] * len(prompts)
        for attempt in range(self.cfg.max_retries + 1):
            todo = [i for i, t in enumerate(out) if t is None]
            for s in range(0, len(todo), self.cfg.batch_size):
                idx = todo[s : s + self.cfg.batch_size]
                texts = [self._chat(prompts[i]) for i in idx]
                enc = self._tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
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
                for i, row in zip(idx, gen[:, enc["input_ids"].shape[1] :]):
                    out[i] = parse_answer(PREFILL + self._tok.decode(row, skip_special_tokens=True))
        self.failures += sum(t is None for t in out)
        return [t or [] for t in out]

    def _chat(self, msgs: list[dict]) -> str:
        if self._tok.chat_template:
            text = self._tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in msgs[:-1]) + "\n\n" + msgs[-1]["content"] + "\nTags: "
        return text + PREFILL
