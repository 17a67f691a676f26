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

from anchorlm.allocator import keep_freed_memory
from anchorlm.draw import draw, row_key, uniforms  # noqa: F401 (row_key and uniforms: the engine's API too)
from anchorlm.kvcache import movable, preallocated, shift, shift_columns

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


def generate(model, prompts: list[list[int]], keys: list[int], s: Settings, pad_id: int,
             counters: list[int] | None = None, uncond: list[list[int]] | None = None) -> list[Out]:  # fmt: skip
    """Sample every row: (annotation, then) response, as `Settings` say. `keys` name each row's
    random stream and `counters` (default 0) how many draws it has used already. With
    `s.guidance_scale` and `uncond` (each row's prompt without its annotation), response logits
    are guided. Tells glibc to keep freed memory for the process's life (`anchorlm.allocator`; the
    process then keeps its high-water mark; ANCHORLM_MALLOC=default leaves glibc as it is)."""

    n = len(prompts)
    if not n:
        return []
    if uncond is not None and len(uncond) != n:
        raise ValueError("guidance needs one unconditional prompt per row")
    seqs = list(prompts) + list(uncond or [])
    keep_freed_memory()  # each step's logits and draw reuse the last step's memory (allocator.py)
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
            at = b.at[who]
            lg = (
                logits if len(at) == len(logits) and (at == np.arange(len(at))).all() else logits[b.index(at)]
            )
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
        self.cache = preallocated(model, width + max_steps)
        # the attention mask of every step, preallocated: step t reads its first width + t + 1 columns
        self.mask = torch.zeros((len(seqs), width + max_steps), dtype=torch.long, device=device)
        self.width = self.t = width
        for i, h in enumerate(heads):
            self.mask[i, width - len(h) : width] = 1
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
        self.fed: list[int] = []  # tokens fed since the last step, and their original rows
        self.fed_rows: list[int] = []
        self.rows = np.arange(len(seqs))  # the original index of each batch position
        self.at = np.arange(len(seqs))  # the batch position of each original row (-1: gone)

    def step(self):
        """Feed every row its next input; the logits after it, one row per batch position."""
        import torch

        if self.fed:  # the inputs `feed` set since the last step, in one assignment
            at = self.index(self.at[self.fed_rows])
            self.next[at] = torch.tensor(self.fed, dtype=torch.long, device=self.device)
            self.real[at] = True
            self.fed, self.fed_rows = [], []
        self.mask[:, self.t] = self.real
        self.t += 1
        with torch.no_grad():
            logits = self.forward(self.next[:, None], self.mask[:, : self.t], self.pos[:, None], self.cache)
        self.pos = self.pos + self.real.long()
        self.next, self.real = self.next.clone(), self.real.clone()
        return logits

    def room(self) -> int:
        """How many more steps the cache holds (a preallocated one is full at its length)."""
        return (getattr(self.cache, "max_cache_len", None) or self.mask.shape[1]) - self.t

    def can_join(self, seqs: list[list[int]], steps: int) -> bool:
        """Whether rows with these prompts fit for `steps` more steps: their prompts (but the last
        token) end at the batch's current column; one longer than the columns filled moves the
        columns right first (a preallocated cache with room for it), else it waits."""
        wider = max(0, max(len(q) - 1 for q in seqs) - self.t)
        return (wider == 0 or movable(self.cache)) and wider + steps <= min(self.room(), self.mask.shape[1] - self.t)

    def join(self, model, seqs: list[list[int]], pad_id: int) -> list[int]:
        """Add rows to the running batch (`can_join` says whether they fit): their prompts are
        prefilled apart, right-aligned to the batch's current column, and their caches appended to
        the batch's, so the rows already decoding go on unchanged. Returns the new rows' indices."""
        import torch

        other = _Batch(model, seqs, len(seqs), pad_id, self.mask.shape[1] - self.t)
        width = other.t  # the newcomers' columns of prompt, right-aligned to self.t
        if width > self.t and shift_columns(self.cache, self.t, width - self.t):
            self._move_mask(width - self.t)  # the rows decoding move right to make room
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            k = torch.zeros((len(seqs), *mine.keys.shape[1:]), dtype=mine.keys.dtype, device=mine.keys.device)
            v = torch.zeros_like(k)
            if width:
                k[:, :, self.t - width : self.t] = theirs.keys[:, :, :width]
                v[:, :, self.t - width : self.t] = theirs.values[:, :, :width]
            mine.keys, mine.values = torch.cat([mine.keys, k]), torch.cat([mine.values, v])
            if hasattr(mine, "batch_size"):
                mine.batch_size = mine.keys.shape[0]
        mask = torch.zeros((len(seqs), self.mask.shape[1]), dtype=self.mask.dtype, device=self.device)
        mask[:, self.t - width : self.t] = other.mask[:, :width]
        self.mask = torch.cat([self.mask, mask])
        self.pos, self.next = torch.cat([self.pos, other.pos]), torch.cat([self.next, other.next])
        self.real = torch.cat([self.real, other.real])
        first = len(self.at)
        new = np.arange(first, first + len(seqs))
        self.rows = np.concatenate([self.rows, new])
        self.at = np.concatenate([self.at, len(self.rows) - len(seqs) + np.arange(len(seqs))])
        return new.tolist()

    def index(self, positions: np.ndarray):
        """Batch positions as an index tensor on the model's device."""
        import torch

        return torch.as_tensor(positions, dtype=torch.long, device=self.device)

    def feed(self, row: int, token: int) -> None:
        """Original row `row` is fed `token` (a real input) on the next step."""
        self.fed_rows.append(row)
        self.fed.append(token)

    def trim(self, least: int = 32) -> int:
        """Drop the columns left of every row's first real input once there are `least` of them: in a
        batch that lives on while rows join and leave (the server's), the rows that wrote them have
        gone. Attention then reads the live rows' span, not the batch's whole life, and the cache has
        room for rows to join instead of filling up (a longer prompt moves the columns back right:
        `join`). Attention sums over other columns (rounding differs): `generate` does not trim.
        Returns the columns dropped (0 for a growing cache)."""
        import torch

        real = self.mask[:, : self.t].bool()
        first = int(torch.where(real.any(1), real.int().argmax(1), self.t).min()) if len(real) else 0
        if first < least or not shift_columns(self.cache, self.t, -first):
            return 0
        self._move_mask(-first)
        return first

    def _move_mask(self, by: int) -> None:
        """The mask's columns follow `shift_columns` (the columns left empty masked); the batch's
        current column moves with them."""
        shift(self.mask, 1, self.t, by).fill_(0)
        self.t += by

    def compact(self, alive: np.ndarray, share: float) -> bool:
        """Drop the finished rows once they are `share` of the batch (copying the cache costs);
        whether it did."""

        if alive.all() or (~alive).mean() < share:
            return False
        keep = self.index(np.flatnonzero(alive))
        self.cache.reorder_cache(keep)
        self.mask, self.pos, self.next, self.real = (
            x[keep] for x in (self.mask, self.pos, self.next, self.real)
        )
        self.rows = self.rows[alive]
        self.at[:] = -1
        self.at[self.rows] = np.arange(len(self.rows))
        return True
