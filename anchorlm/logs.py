"""One line of progress for long runs: `[anchorlm 12:34:56] what`, flushed at once."""

from __future__ import annotations

import time


def log(msg: str) -> None:
    print(f"[anchorlm {time.strftime('%H:%M:%S')}] {msg}", flush=True)
