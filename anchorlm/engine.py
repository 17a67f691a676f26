"""Batched, KV-cached sampling for any Hugging Face causal LM: anchorlm's own decode loop.

Why not `model.generate`: anchored sampling needs an annotation segment and a response segment in
one pass (the annotation closed by force when it runs too long), anchor guidance needs the logits
of each sample with and without its annotation in the same forward pass, and on a CPU the time
goes to what `generate` repeats for every row. Here

- each distinct prompt is prefilled once and its KV cache copied to all of its samples;
- annotation and response are written in one loop: a row that closes its annotation (or runs out
  of annotation tokens, or ends it with EOS) is fed the closing token and goes on with its
  response, so anchored sampling costs per generated token what plain sampling costs;
- rows that finish leave the batch (their cache rows are dropped) instead of computing padding;
- every row draws from its own random stream (a 64-bit key and a counter of tokens drawn, fed to
  a counter-based generator), so a row's tokens do not depend on which rows share its batch, on the
  batch size, or on how annotation and response are split into calls;
- with `guidance_scale` g, each row has an unconditional partner: the same prompt without the
  annotation, fed the same response tokens. Response logits are l_c + g (l_c - l_u). The partner
  waits (masked slots) while the annotation is written, then joins with the prompt's last token.
  g = 0 gives exactly the unguided tokens: the same logits, the same random numbers.

Left padding: rows of different lengths are right-aligned; padded and waiting slots are masked,
and position ids count only real tokens, so a row's logits equal those of the row run alone (up
to floating-point summation order).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

_MASK64 = (1 << 64) - 1
ANNOTATION, CUT, RESPONSE, DONE = 0, 1, 2, 3


@dataclass
class Settings:
    """How tokens are drawn, for every row of one call."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 96  # response tokens at most
    stop: tuple = ()  # tokens that end a response (kept out of it, reported as its stop)
    annotation: tuple | None = None  # (max tokens, close id, stop ids): write an annotation first
    guidance_scale: float = 0.0
    compact_at: float = 0.25  # drop finished rows from the batch once this share is finished


@dataclass
class Out:
    """One row's result: the annotation's tokens and how it ended (close id, EOS id, or None when
    it was cut at max tokens), then the response's tokens and its stop token (None: cut)."""

    annotation: list = field(default_factory=list)
    annotation_stop: int | None = None
    response: list = field(default_factory=list)
    stop: int | None = None


def uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) for each (key, counter): SplitMix64 of the two, 53 bits kept.
    Counter-based, so a row's i-th draw is the same in any batch."""
    with np.errstate(over="ignore"):
        z = (
            keys.astype(np.uint64) ^ (counters.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        ) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def row_key(*parts) -> int:
    """A 64-bit key naming a row's random stream, from anything printable (seed, prompt id, index)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def draw(logits, temperature: float, top_p: float, u: np.ndarray):
    """One token per row of `logits` [n, V]: greedy at temperature 0, else inverse-CDF sampling of
    softmax(logits / T), restricted to the nucleus (the most likely tokens whose probabilities sum
    to at least `top_p`) when top_p < 1, with the row's uniform number u."""
    import torch

    if temperature == 0:
        return logits.argmax(-1).cpu()
    z = logits if temperature == 1 else logits / temperature
    p = torch.exp(z - z.max(-1, keepdim=True).values)  # unnormalised: the CDF is scaled instead
    order = None
    if top_p < 1:
        p = p / p.sum(-1, keepdim=True)
        p, order = p.sort(-1, descending=True)
        before = p.cumsum(-1) - p  # mass of the tokens ranked above
        p = p.masked_fill(before >= top_p, 0.0)
    c = p.cumsum(-1)
    v = torch.from_numpy(u)[:, None].to(c) * c[:, -1:]
    idx = torch.searchsorted(c, v, right=True).clamp_(max=p.shape[-1] - 1)[:, 0]
    return (idx if order is None else order.gather(-1, idx[:, None])[:, 0]).cpu()


def _forward(model):
    """model(ids, mask, positions, cache) -> logits of the last position, whatever the model's
    transformers version calls the cache argument (`cache`, earlier `past_key_values`)."""
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    name = "cache" if "cache" in params else "past_key_values"

    def forward(ids, mask, positions, cache):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{name: cache}, **extra)  # fmt: skip
        return out.logits[:, -1].float()

    return forward


def _cache(model, length: int):
    """A preallocated KV cache (written in place: no copy of the cache per token) where the model
    supports one, else a growing one."""
    from transformers import DynamicCache, StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=length)
    except (TypeError, ValueError, AttributeError, KeyError):
        return DynamicCache()


def generate(model, prompts: list[list[int]], keys: list[int], s: Settings, pad_id: int,
             counters: list[int] | None = None, uncond: list[list[int]] | None = None) -> list[Out]:  # fmt: skip
    """Sample every row: (annotation, then) response, as `Settings` say. `keys` name each row's
    random stream and `counters` (default 0) how many draws it has used already. With
    `s.guidance_scale` and `uncond` (each row's prompt without its annotation), response logits
    are guided."""

    n = len(prompts)
    if not n:
        return []
    if uncond is not None and len(uncond) != n:
        raise ValueError("guidance needs one unconditional prompt per row")
    seqs = list(prompts) + list(uncond or [])
    if any(len(q) == 0 for q in seqs):
        raise ValueError("every prompt needs at least one token")
    max_steps = (s.annotation[0] + 1 if s.annotation else 0) + s.max_new_tokens + 1
    b = _Batch(model, seqs, n, pad_id, max_steps)
    guided = uncond is not None
    ann = s.annotation
    # phase of each sampled row: ANNOTATION, CUT (annotation full: fed the close token next, its
    # logits unused), RESPONSE, DONE
    phase = np.full(n, ANNOTATION if ann else RESPONSE, dtype=np.int64)
    if guided and ann:
        b.real[n:] = False  # the partner waits until the annotation is closed
    count = np.zeros(n, dtype=np.int64)  # tokens drawn in the current segment
    drawn = np.array(counters if counters is not None else [0] * n, dtype=np.int64)
    keyarr = np.array([k & _MASK64 for k in keys], dtype=np.uint64)
    outs = [Out() for _ in range(n)]

    def close(w: int) -> None:  # feed the closing token; the partner starts with its prompt's end
        b.feed(w, ann[1])
        phase[w], count[w] = RESPONSE, 0
        if guided:
            b.feed(w + n, uncond[w][-1])

    for _ in range(max_steps):
        logits = b.step()
        sampled = b.rows[b.rows < n]
        who = sampled[np.isin(phase[sampled], (ANNOTATION, RESPONSE))]
        for w in sampled[phase[sampled] == CUT]:
            close(int(w))
        if len(who):
            lg = logits[b.index(b.at[who])]
            resp = np.flatnonzero(phase[who] == RESPONSE)
            if guided and s.guidance_scale and len(resp):
                lc = lg[b.index(resp)]
                lu = logits[b.index(b.at[who[resp] + n])]
                lg[b.index(resp)] = lc + s.guidance_scale * (lc - lu)
            tokens = draw(lg, s.temperature, s.top_p, uniforms(keyarr[who], drawn[who])).tolist()
            drawn[who] += 1
            for w, t in zip(who.tolist(), tokens):
                o = outs[w]
                if phase[w] == ANNOTATION:
                    if t == ann[1] or t in ann[2]:  # an EOS inside the annotation closes it too
                        o.annotation_stop = t
                        close(w)
                        continue
                    o.annotation.append(t)
                    count[w] += 1
                    b.feed(w, t)
                    if count[w] >= ann[0]:
                        phase[w] = CUT
                elif t in s.stop:
                    o.stop, phase[w] = t, DONE
                else:
                    o.response.append(t)
                    count[w] += 1
                    b.feed(w, t)
                    if guided:
                        b.feed(w + n, t)
                    if count[w] >= s.max_new_tokens:
                        phase[w] = DONE
        if (phase == DONE).all():
            break
        b.compact(phase[b.rows % n] != DONE, s.compact_at)
    return outs


class _Batch:
    """The rows being decoded and their KV cache: what each row is fed next, whether that input is
    real (a waiting row's is masked), its position id, and where each original row sits now."""

    def __init__(self, model, seqs: list[list[int]], n: int, pad_id: int, max_steps: int):
        import torch

        self.forward = _forward(model)
        self.device = device = next(model.parameters()).device
        # prefill each distinct prompt-but-its-last-token once, then copy its cache to its rows
        heads = [tuple(q[:-1]) for q in seqs]
        distinct = list(dict.fromkeys(heads))
        width = max(map(len, distinct))
        self.cache = _cache(model, width + max_steps)
        self.mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
        for i, h in enumerate(heads):
            self.mask[i, width - len(h) :] = 1
        if width:
            ids = torch.full((len(distinct), width), pad_id, dtype=torch.long, device=device)
            m = torch.zeros_like(ids)
            for j, h in enumerate(distinct):
                if h:
                    ids[j, width - len(h) :] = torch.tensor(h)
                    m[j, width - len(h) :] = 1
            with torch.no_grad():
                self.forward(ids, m, (m.cumsum(-1) - 1).clamp(min=0), self.cache)
            where = {h: j for j, h in enumerate(distinct)}
            self.cache.reorder_cache(torch.tensor([where[h] for h in heads], device=device))
        self.pos = torch.tensor([len(h) for h in heads], dtype=torch.long, device=device)
        self.next = torch.tensor([q[-1] for q in seqs], dtype=torch.long, device=device)
        self.real = torch.ones(len(seqs), dtype=torch.bool, device=device)
        self.rows = np.arange(len(seqs))  # the original index of each batch position
        self.at = np.arange(len(seqs))  # the batch position of each original row (-1: gone)

    def step(self):
        """Feed every row its next input; the logits after it, one row per batch position."""
        import torch

        self.mask = torch.cat([self.mask, self.real.long()[:, None]], dim=1)
        with torch.no_grad():
            logits = self.forward(self.next[:, None], self.mask, self.pos[:, None], self.cache)
        self.pos = self.pos + self.real.long()
        self.next, self.real = self.next.clone(), self.real.clone()
        return logits

    def index(self, positions: np.ndarray):
        """Batch positions as an index tensor on the model's device."""
        import torch

        return torch.as_tensor(positions, dtype=torch.long, device=self.device)

    def feed(self, row: int, token: int) -> None:
        """Original row `row` is fed `token` (a real input) on the next step."""
        self.next[self.at[row]] = token
        self.real[self.at[row]] = True

    def compact(self, alive: np.ndarray, share: float) -> None:
        """Drop the finished rows once they are `share` of the batch (copying the cache costs)."""

        if alive.all() or (~alive).mean() < share:
            return
        keep = self.index(np.flatnonzero(alive))
        self.cache.reorder_cache(keep)
        self.mask, self.pos, self.next, self.real = (
            x[keep] for x in (self.mask, self.pos, self.next, self.real)
        )
        self.rows = self.rows[alive]
        self.at[:] = -1
        self.at[self.rows] = np.arange(len(self.rows))
