"""What a row draws: its random stream (a 64-bit key and a counter, so its i-th draw is the same in
any batch) and the token that number picks from the logits (greedy, full softmax, or top-p among
the most likely tokens first)."""

from __future__ import annotations

import numpy as np


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


# top-p looks for the nucleus among the tokens of at least this probability, in turn, before it
# sorts the whole vocabulary
NUCLEUS_FLOORS = (1e-4, 1e-6)


def draw(logits, temperature: float, top_p: float, u: np.ndarray):
    """One token per row of `logits` [n, V]: greedy at temperature 0, else inverse-CDF sampling of
    softmax(logits / T), restricted to the nucleus (the most likely tokens whose probabilities sum
    to at least `top_p`, ties ordered by token id) when top_p < 1, with the row's uniform number u
    (T divides the logits less their row's maximum: no overflow even at T = 1e-30).

    The nucleus is looked for among the tokens of probability 1e-4 or more, then 1e-6, before the
    whole vocabulary is sorted (sorting SmolLM2's 49k took 40% of a decode step at batch 32; its
    nucleus at top_p 0.95 held 141 tokens in the median, 740 at most at T = 0.8, 6338 at T = 1); a
    row moves on when its nucleus may reach past them: the same result as sorting everything. Those
    tokens are found by one comparison over the vocabulary (`torch.topk` of 256 candidates, as
    before, took 30% of the draw at batch 96)."""
    import torch

    if temperature == 0:
        return logits.argmax(-1).cpu()
    z = logits if temperature == 1 else (logits - logits.amax(-1, keepdim=True)).div_(temperature)
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
    """Nucleus draws from logits `z` (temperature applied): each row's tokens above a probability
    floor (`_above`), their probabilities exp(z - logsumexp(z)), so no pass writes a probability
    for every token of the vocabulary, except in the rows that need the whole sort."""
    import math

    import torch

    z = z.cpu()  # the draw's bookkeeping (rows, u, the result) lives on the CPU
    lse = torch.logsumexp(z, -1, keepdim=True)
    out = torch.empty(z.shape[0], dtype=torch.long)
    rows = torch.arange(z.shape[0])
    for floor in NUCLEUS_FLOORS:
        zr, lr = (z, lse) if len(rows) == len(z) else (z[rows], lse[rows])
        zk, order = _above(zr, lr + math.log(floor))
        vals = torch.exp(zk - lr)
        # the tokens above the floor come first in the whole vocabulary's order too, so they hold
        # the nucleus when it ends among them: when one of them lies outside it. Not the padding:
        # its mass before is the candidates' float32 total, and where that equals top_p the whole
        # sort's next token (its mass before rounded from another sum) can still be inside
        held = (((vals.cumsum(-1) - vals) >= top_p) & (zk > float("-inf"))).any(-1)
        out[rows[held]] = _nucleus_draw(vals[held], order[held], top_p, u[rows[held]])
        rows = rows[~held]
        if not len(rows):
            return out
    zk, order = _descending(z[rows])
    out[rows] = _nucleus_draw(torch.exp(zk - lse[rows]), order, top_p, u[rows])
    return out


def _above(z, floor):
    """Each row's values of `z` at or above its row's `floor`, in descending order with ties
    ordered by token id, and their token ids: rows padded at the end (value -inf, id 0) to the
    longest one. A row's values are its most likely tokens: every token left out is less likely."""
    import torch

    z = z.detach().contiguous()
    # numpy's comparison and flatnonzero: 2.7 ms over 96 x 49k where torch's took 10.7 (in float32:
    # rounding keeps the order, so the tokens kept are still the most likely ones)
    above = z.float().numpy() >= floor.detach().float().numpy()
    flat = torch.from_numpy(np.flatnonzero(above))  # by row, then token id
    r, c, v = flat // z.shape[-1], flat % z.shape[-1], z.view(-1)[flat]
    at = torch.sort(v, descending=True, stable=True).indices  # by value, ties by token id
    at = at[torch.sort(r[at], stable=True).indices]  # then by row, keeping that order
    r, c, v = r[at], c[at], v[at]
    n = torch.bincount(r, minlength=len(z))
    pos = torch.arange(len(r)) - (n.cumsum(0) - n)[r]
    width = max(int(n.max()), 1) if len(z) else 1
    vals = torch.full((len(z), width), float("-inf"), dtype=z.dtype)
    ids = torch.zeros((len(z), width), dtype=torch.long)
    vals[r, pos], ids[r, pos] = v, c
    return vals, ids


def _descending(x):
    """Each row's values in descending order, ties ordered by token id, and their token ids."""
    import torch

    return torch.sort(x, dim=-1, descending=True, stable=True)


def _nucleus_draw(vals, order, top_p: float, u):
    """Inverse-CDF draw over each row's nucleus (descending `vals`, token ids `order`)."""
    import torch

    c = vals.masked_fill((vals.cumsum(-1) - vals) >= top_p, 0.0).cumsum(-1)
    j = torch.searchsorted(c, u[:, None].to(c) * c[:, -1:], right=True)
    # u x total can round up to the total: then the last token that carries probability, never
    # one after it (outside the nucleus, or of probability 0)
    j = torch.minimum(j, (c < c[:, -1:]).sum(-1, keepdim=True))
    return order.gather(-1, j)[:, 0]
