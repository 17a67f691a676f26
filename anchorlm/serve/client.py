"""`anchorlm noveltybench`: the call NoveltyBench's inference makes (chat completions, n = 10,
temperature 1.0), against any OpenAI-compatible endpoint, written as NoveltyBench's
`generations.jsonl` ({id, prompt, model, generations}) so its scorer reads it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from anchorlm.io import write_jsonl


def noveltybench(base_url: str, model: str, api_key: str, prompts: list[dict], n: int = 10,
                 temperature: float = 1.0, max_tokens: int = 256, concurrency: int = 4,
                 out: str | Path = "generations.jsonl") -> int:  # fmt: skip
    """Sample `n` generations of each prompt; returns how many prompts were written."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=3, timeout=600)

    def one(p: dict) -> dict:
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": p["prompt"]}], n=n, temperature=temperature,
            max_tokens=max_tokens,
        )  # fmt: skip
        gens = [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]
        return {"id": p["id"], "prompt": p["prompt"], "model": model, "generations": gens}

    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(tqdm(pool.map(one, prompts), total=len(prompts), desc="noveltybench", unit="prompt"))
    return write_jsonl(out, rows)
