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
