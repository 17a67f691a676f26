"""The assistant style the SFT data teaches (a fixed opener and closer around the content), and
how evaluation reads it back: whether a response follows it, and the content without it."""

from __future__ import annotations


def style(cfg, content: str) -> str:
    return f"{cfg.opener}\n{content.strip()}\n{cfg.closer}"


def strip_style(cfg, response: str) -> str:
    """The response without the style opener/closer, for measuring semantic diversity."""
    r = response.strip()
    if r.startswith(cfg.opener):
        r = r[len(cfg.opener) :]
    if r.endswith(cfg.closer):
        r = r[: -len(cfg.closer)]
    return r.strip()


def follows_style(cfg, response: str) -> bool:
    r = response.strip()
    return r.startswith(cfg.opener) and r.endswith(cfg.closer) and len(strip_style(cfg, r)) > 0
