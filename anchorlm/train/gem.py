"""GEM: the entropy-regularised replacement for SFT's cross-entropy (Li et al., ICLR 2025,
"Preserving Diversity in Supervised Fine-Tuning of Large Language Models").

For logits z over the vocabulary, target y and q = softmax(z / beta) held constant (no gradient):

    loss = -sum_j q_j * (log p_y - log p_j),   p = softmax(z)

Its gradient with respect to z is q - onehot(y): cross-entropy's gradient p - onehot(y) with the
model's own distribution replaced by a sharpened copy of it (beta < 1). Mass the model already puts on
other tokens is pushed down only as fast as q says, so the fine-tuned distribution keeps more entropy
than under cross-entropy. With beta = 1 the gradient equals cross-entropy's.
"""

from __future__ import annotations

from anchorlm.data.examples import IGNORE


def gem_loss(logits, labels, beta: float = 0.7, num_items_in_batch=None):
    """GEM loss (the paper's linear form) of causal-LM `logits` [B, T, V] against `labels` [B, T]
    (unshifted, IGNORE where no loss): mean over the scored tokens, or their sum divided by
    `num_items_in_batch` when the trainer gives it."""
    import torch
    import torch.nn.functional as F

    z = logits[:, :-1].float()
    y = labels[:, 1:]
    keep = y != IGNORE
    z, y = z[keep], y[keep]
    if y.numel() == 0:
        return logits.sum() * 0.0
    logp = F.log_softmax(z, dim=-1)
    q = torch.softmax(z.detach() / beta, dim=-1)
    logp_y = logp.gather(-1, y[:, None])
    per_token = -(q * (logp_y - logp)).sum(-1)
    if num_items_in_batch is not None:
        n = (
            num_items_in_batch.to(per_token.device)
            if torch.is_tensor(num_items_in_batch)
            else num_items_in_batch
        )
        return per_token.sum() / n
    return per_token.mean()


def gem_loss_func(beta: float):
    """A `compute_loss_func` for `transformers.Trainer`."""

    def compute(outputs, labels, num_items_in_batch=None):
        return gem_loss(outputs.logits, labels, beta, num_items_in_batch)

    return compute
