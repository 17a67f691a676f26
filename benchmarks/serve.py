"""`anchorlm serve` under load, against offline `anchorlm sample` on the same model, in one run.

    .venv/bin/python benchmarks/serve.py                 # the demo's AAT model (runs/demo), else a smoke one
    .venv/bin/python benchmarks/serve.py --model DIR     # any model anchorlm loads

16 clients on loopback, each sending 20 chat requests one after another (n = 1, 32 tokens at most,
temperature 1, a seed of its own per request). Checked: every request gets exactly one answer, with
an id no other answer has, and the answers of 16 requests asked again alone, one at a time, equal
what they got under load (same seed, same choice: nothing was mixed between requests sharing the
decode batch). Printed: throughput (completion tokens, annotations included, per second), p50/p95
latency, the server's peak memory, and the same prompts sampled offline (anchorlm.sample, batch 16
= the clients, same token caps) measured in the same run. The goal is at least 0.8x offline.

Bounded: each request waits 120 s at most, the whole load 15 minutes; the server is stopped in any
case. Writes docs/benchmarks-serve.json (generated).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anchorlm.config import SampleConfig  # noqa: E402
from anchorlm.format import ANN_OPEN  # noqa: E402
from anchorlm.models import load_tokenizer  # noqa: E402
from anchorlm.provenance import code_version, describe, machine  # noqa: E402
from anchorlm.sample import sample  # noqa: E402

CLIENTS, REQUESTS, MAX_TOKENS = 16, 20, 32


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _model(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    demo = ROOT / "runs/demo/models/aat"
    if (demo / "config.json").exists():
        return demo
    out = Path(tempfile.mkdtemp(prefix="anchorlm-serve-bench-")) / "smoke"
    print(f"no demo run at {demo}: training the smoke recipe's models into {out} (about 2 minutes)")
    made = subprocess.run([sys.executable, "-m", "anchorlm.cli", "demo", "--config", "smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if made.returncode:
        raise SystemExit(f"the smoke run failed:\n{made.stderr[-3000:]}")
    return out / "models/aat"


def prompts() -> list[str]:
    topics = ["the sea", "a library", "winter", "a robot", "bread", "a city at night", "a teacher", "rain"]
    return [f"Write something about {topics[i % len(topics)]} (note {i})." for i in range(CLIENTS * REQUESTS)]


def load(url: str, texts: list[str]) -> dict:
    """16 clients x 20 requests; every answer checked to arrive once."""
    chat = url + "/chat/completions"
    got: dict[int, dict] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(REQUESTS):
            i = k * REQUESTS + j
            body = {"model": "m", "messages": [{"role": "user", "content": texts[i]}], "max_tokens": MAX_TOKENS,
                    "temperature": 1.0, "seed": 1000 + i}  # fmt: skip
            t = time.perf_counter()
            try:
                r = _post(chat, body)
            except Exception as e:  # counted, and the run fails below
                with lock:
                    errors.append(f"request {i}: {type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)
                if i in got:
                    errors.append(f"request {i} answered twice")
                got[i] = r

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        done, left = wait([pool.submit(client, k) for k in range(CLIENTS)], timeout=15 * 60)
    wall = time.perf_counter() - t0
    if left:
        errors.append(f"{len(left)} clients still waiting after 15 minutes")
    ids = [r["id"] for r in got.values()]
    if len(set(ids)) != len(ids):
        errors.append("two answers share an id")
    if len(got) != len(texts):
        errors.append(f"{len(texts) - len(got)} requests got no answer")
    tokens = sum(r["usage"]["completion_tokens"] for r in got.values())
    return {"got": got, "errors": errors, "wall_s": wall, "tokens": tokens, "latencies": latencies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a model directory (default: runs/demo/models/aat, else a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks-serve.json"))
    args = ap.parse_args()
    model = _model(args.model)
    texts = prompts()

    # offline first, alone: the same prompts, batch 16, the same caps
    cfg = SampleConfig(n_samples=1, temperature=1.0, top_p=1.0, max_new_tokens=MAX_TOKENS, batch_size=CLIENTS)
    anchored = ANN_OPEN in load_tokenizer(str(model), tokens="none").get_vocab()  # as the server decides
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rows = sample(cfg, model, [{"id": str(i), "prompt": p} for i, p in enumerate(texts)], Path(tmp) / "s.jsonl",
                      anchored=anchored)  # fmt: skip
        offline_s = time.perf_counter() - t
    offline_tokens = sum(r["n_tokens"] + r.get("annotation_tokens", 0) for r in rows)

    port = _port()
    url = f"http://127.0.0.1:{port}/v1"
    server = subprocess.Popen(
        [sys.executable, "-m", "anchorlm.cli", "serve", "--model", str(model), "--port", str(port), "--name", "m",
         "--max-batch", str(CLIENTS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log = server.stdout.read() if server.poll() is not None else ""
                    raise SystemExit(f"the server did not start:\n{log}") from None
                time.sleep(0.3)
        _post(
            url + "/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        res = load(url, texts)
        peak = _peak_rss_mib(server.pid)
        alone = []  # 16 requests again, one at a time: the same answers
        for i in range(0, len(texts), REQUESTS):
            body = {"model": "m", "messages": [{"role": "user", "content": texts[i]}], "max_tokens": MAX_TOKENS,
                    "temperature": 1.0, "seed": 1000 + i}  # fmt: skip
            again = _post(url + "/chat/completions", body)["choices"][0]["message"]["content"]
            alone.append(
                again == res["got"][i]["choices"][0]["message"]["content"] if i in res["got"] else False
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    if not all(alone):
        res["errors"].append(
            f"{alone.count(False)} of {len(alone)} answers differ from the same request asked alone"
        )
    lat = np.array(res["latencies"]) if res["latencies"] else np.array([np.nan])
    served_tps, offline_tps = res["tokens"] / res["wall_s"], offline_tokens / offline_s
    out = {
        "machine": describe(machine()),
        "code": code_version(),
        "model": str(model) if args.model else f"the smoke recipe's AAT model ({model})",
        "anchored": anchored,
        "clients": CLIENTS,
        "requests_per_client": REQUESTS,
        "max_tokens": MAX_TOKENS,
        "answered": len(res["got"]),
        "errors": res["errors"],
        "served_tokens_per_s": served_tps,
        "requests_per_s": len(res["got"]) / res["wall_s"],
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "server_peak_rss_mib": peak,
        "offline_tokens_per_s": offline_tps,
        "served_vs_offline": served_tps / offline_tps,
        "goal_served_vs_offline": 0.8,
        "same_answer_alone": f"{sum(alone)}/{len(alone)}",
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for k, v in out.items():
        print(f"{k:24s} {v:.3f}" if isinstance(v, float) else f"{k:24s} {v}")
    if res["errors"]:
        raise SystemExit("FAILED: " + "; ".join(res["errors"][:5]))


if __name__ == "__main__":
    main()
