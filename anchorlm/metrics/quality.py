"""Quality: fluency as per-token negative log-likelihood under an independent reference LM."""

from __future__ import annotations

import numpy as np


def fluency_nll(texts: list[str], model, tok, batch_size: int = 16) -> list[float]:
    """Mean per-token NLL (nats) of each text under `model`; NaN for an empty text.

    Each text is scored after the reference model's BOS (or EOS) token, so its first token counts.
    """
    import torch

    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out: list[float] = []
    for s in range(0, len(texts), batch_size):
        batch = texts[s : s + batch_size]
        enc = [[start] + tok(t, add_special_tokens=False)["input_ids"][:255] for t in batch]
        n = max(map(len, enc))
        ids = torch.zeros((len(enc), n), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].float()
        for i in range(len(enc)):
            k = m[i].sum().item()
            out.append(float(-(logp[i] * m[i]).sum() / k) if k else float("nan"))
    return out


def mean_finite(xs) -> float:
    a = np.asarray([x for x in xs if x == x], dtype=float)
    return float(a.mean()) if len(a) else float("nan")
