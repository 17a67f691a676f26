"""The engine's KV cache: preallocated once per call and written in place, its attention reading
only the columns written so far."""

from __future__ import annotations

import functools


def preallocated(model, length: int):
    """A preallocated KV cache (written in place: no copy of the cache per token) where the model
    supports one, else a growing one. Its full-attention layers attend over the columns written so
    far, not the whole preallocation (see `filled_layer`)."""
    from transformers import DynamicCache, StaticCache
    from transformers.cache_utils import StaticLayer

    try:
        cache = StaticCache(config=model.config, max_cache_len=length)
    except (TypeError, ValueError, AttributeError, KeyError):
        return DynamicCache()
    for layer in cache.layers:
        if type(layer) is StaticLayer:
            layer.__class__ = filled_layer()
            layer.filled = 0
    return cache


@functools.cache
def filled_layer():
    """transformers' StaticLayer hands attention its whole preallocated length every step (masked
    beyond what is written): a step's attention then costs as much at the first token as at the
    last, and an anchored call, whose cache is longer by the annotation's cap, pays for that cap on
    every token. This layer writes in place the same way and returns only the written columns, the
    attention mask sized to match, so attention costs what the tokens so far cost."""
    from transformers.cache_utils import StaticLayer

    class FilledStaticLayer(StaticLayer):
        filled = 0

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            self.filled += key_states.shape[-2]
            return keys[:, :, : self.filled], values[:, :, : self.filled]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.filled + query_length, 0

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self.filled -= abs(tokens_to_remove)

    return FilledStaticLayer


def movable(cache) -> bool:
    """Whether `shift_columns` can move this cache's columns (every layer `filled_layer`'s)."""
    layers = getattr(cache, "layers", [])
    return bool(layers) and all(type(x) is filled_layer() for x in layers)


def shift(x, dim: int, t: int, by: int):
    """Move the first `t` entries of `x` along `dim` by `by` (right when positive, dropping the
    first -`by` when negative), in place; returns the entries left behind (a view: the caller may
    clear them)."""
    moved = x.narrow(dim, 0, t).clone() if by > 0 else x.narrow(dim, -by, t + by).clone()
    x.narrow(dim, max(by, 0), moved.shape[dim]).copy_(moved)
    return x.narrow(dim, 0, by) if by > 0 else x.narrow(dim, t + by, x.shape[dim] - t - by)


def shift_columns(cache, t: int, by: int) -> bool:
    """Move the `t` columns written of every layer of a `preallocated` cache: `by` > 0 columns to the
    right (the first `by` then hold nothing: the caller masks them), `by` < 0 drops the first -`by`.
    The count of columns written follows, so the next token goes after them. False, and nothing
    moved, where a layer is not `filled_layer`'s (a growing cache)."""
    if not movable(cache):
        return False
    for layer in cache.layers:
        for buf in (layer.keys, layer.values):
            shift(buf, 2, t, by)  # the columns left empty keep stale values: masked, then overwritten
        layer.cumulative_length.add_(by)  # where StaticLayer.update writes next
        layer.filled += by
    return True
