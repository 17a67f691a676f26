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

from anchorlm.kvcache import preallocated

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


NUCLEUS_CANDIDATES = (256, 4096)  # top-p looks for the nucleus among this many most likely tokens, in turn


def draw(logits, temperature: float, top_p: float, u: np.ndarray):
    """One token per row of `logits` [n, V]: greedy at temperature 0, else inverse-CDF sampling of
    softmax(logits / T), restricted to the nucleus (the most likely tokens whose probabilities sum
    to at least `top_p`, ties ordered by token id) when top_p < 1, with the row's uniform number u
    (T divides the logits less their row's maximum: no overflow even at T = 1e-30).

    The nucleus is looked for among the 256, then 4096 most likely tokens before the whole
    vocabulary is sorted (sorting SmolLM2's 49k took 40% of a decode step at batch 32; its nucleus at
    top_p 0.95 held 141 tokens in the median, 740 at most at T = 0.8, 6338 at T = 1); a row moves on
    when its nucleus may reach past the candidates: the same result as sorting everything."""
    import torch

    if temperature == 0:
        return logits.argmax(-1).cpu()
    z = logits if temperature == 1 else (logits - logits.amax(-1, keepdim=True)) / temperature
    uu = torch.from_numpy(u)
    if top_p >= 1:
        return _inverse_cdf(torch.softmax(z, -1), uu)  # one fused pass (exp(z - max) took 5x as long)
    return _nucleus(z, top_p, uu)


BLOCK = 256  # the inverse CDF finds a token's block of this many first, then the token in it


def _inverse_cdf(p, u):
    """The token whose cumulative probability first exceeds u times the total, by
    blocks: the cumulative sum runs over the blocks' sums and then inside one block per row, not
    over the whole vocabulary (a sequential pass over 49k tokens a row)."""
    import torch

    n, v = p.shape
    pad = (-v) % BLOCK
    blocks = torch.nn.functional.pad(p, (0, pad)).view(n, -1, BLOCK)
    outer = blocks.sum(-1).cumsum(-1)
    target = u[:, None].to(outer) * outer[:, -1:]
    b = torch.searchsorted(outer, target, right=True).clamp_(max=outer.shape[-1] - 1)  # [n, 1]
    before = torch.where(b > 0, outer.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(target))
    inner = blocks.gather(1, b[:, :, None].expand(-1, 1, BLOCK))[:, 0].cumsum(-1)
    j = torch.searchsorted(inner, target - before, right=True).clamp_(max=BLOCK - 1)
    return (b * BLOCK + j).clamp_(max=v - 1)[:, 0].cpu()


def _nucleus(z, top_p: float, u):
    """Nucleus draws from logits `z` (temperature applied): candidates by `torch.topk` on the logits
    (the order of the probabilities), their probabilities exp(z - logsumexp(z)), so no pass writes a
    probability for every token of the vocabulary, except in the rows that need the whole sort."""
    import torch

    lse = torch.logsumexp(z, -1, keepdim=True)
    out = torch.empty(z.shape[0], dtype=torch.long)
    rows = torch.arange(z.shape[0])
    for k in (*NUCLEUS_CANDIDATES, z.shape[-1]):
        k = min(k, z.shape[-1])
        zk, order = _descending(z[rows], k)
        vals = torch.exp(zk - lse[rows])
        before = vals.cumsum(-1) - vals  # mass of the tokens ranked above
        inside = before < top_p
        # the candidates hold the nucleus when its last token is more likely than the last candidate
        last = zk.gather(-1, inside.sum(-1, keepdim=True) - 1)[:, 0]
        held = (
            ~inside.all(-1) & (last > zk[:, -1])
            if k < z.shape[-1]
            else torch.ones_like(last, dtype=torch.bool)
        )
        out[rows[held]] = _nucleus_draw(vals[held], order[held], top_p, u[rows[held]])
        rows = rows[~held]
        if not len(rows):
            break
    return out


def _descending(x, k: int):
    """The `k` largest values of each row and their token ids, in descending order with ties
    ordered by token id (a stable sort of the candidates, which topk returns in no fixed order)."""
    import torch

    vals, idx = torch.topk(x, k, dim=-1) if k < x.shape[-1] else (x, torch.arange(x.shape[-1]).expand_as(x))
    idx, at = idx.sort(-1)
    vals = vals.gather(-1, at)
    vals, at = torch.sort(vals, dim=-1, descending=True, stable=True)
    return vals, idx.gather(-1, at)


def _nucleus_draw(vals, order, top_p: float, u):
    """Inverse-CDF draw over each row's nucleus (descending `vals`, token ids `order`)."""
    import torch

    vals = vals.masked_fill((vals.cumsum(-1) - vals) >= top_p, 0.0)
    c = vals.cumsum(-1)
    j = torch.searchsorted(c, u[:, None].to(c) * c[:, -1:], right=True).clamp_(max=vals.shape[-1] - 1)
    return order.gather(-1, j)[:, 0]


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
        token) end at the batch's current column, so none may be longer than the columns filled."""
        fits = max(len(q) - 1 for q in seqs) <= self.t
        return fits and steps <= min(self.room(), self.mask.shape[1] - self.t)

    def join(self, model, seqs: list[list[int]], pad_id: int) -> list[int]:
        """Add rows to the running batch (`can_join` says whether they fit): their prompts are
        prefilled apart, right-aligned to the batch's current column, and their caches appended to
        the batch's, so the rows already decoding go on unchanged. Returns the new rows' indices."""
        import torch

        other = _Batch(model, seqs, len(seqs), pad_id, self.mask.shape[1] - self.t)
        width = other.t  # the newcomers' columns of prompt, right-aligned to self.t
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
        gone, and every row left masks them. Attention then reads the live rows' span, not the batch's
        whole life, and the cache makes room for rows to join instead of filling up. Attention's sums
        then run over other columns (rounding differs): `generate` does not trim. Returns the columns
        dropped (0 where the cache's layers are not all `kvcache.filled_layer`'s)."""
        import torch

        from anchorlm.kvcache import filled_layer

        layers = getattr(self.cache, "layers", [])
        if not len(self.rows) or not layers or any(type(x) is not filled_layer() for x in layers):
            return 0
        real = self.mask[:, : self.t].bool()
        first = int(torch.where(real.any(1), real.int().argmax(1), self.t).min())
        if first < least:
            return 0
        keep = self.t - first
        for layer in layers:
            for buf in (layer.keys, layer.values):
                buf[:, :, :keep] = buf[:, :, first : self.t].clone()
            layer.crop(-first)  # the count of columns written (where the next one goes) drops by `first`
        self.mask[:, :keep] = self.mask[:, first : self.t].clone()
        self.mask[:, keep:] = 0
        self.t = keep
        return first

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
