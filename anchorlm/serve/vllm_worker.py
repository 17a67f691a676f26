"""The server's vLLM backend (`anchorlm serve --backend vllm`): the same API, anchors and events as
anchorlm.serve.worker, with vLLM's engine doing the decoding (its continuous batching, scheduler and
KV cache; `max_batch` is its `max_num_seqs`).

vLLM gives no hook between a choice's annotation and its response, so an anchored choice is two
vLLM requests, as in `anchorlm sample --backend vllm`: the annotation (after `<|ann|>` and any
given start, up to `<|/ann|>`, EOS or the annotation cap), then the response after
`<|ann|>annotation<|/ann|>`. Each request has its own seed, named by the request's seed and the
choice's index, so n choices are never copies and the same seed gives the same choices (in
another batch, up to vLLM's floating-point differences of another batch shape). Stop
sequences, held-back deltas and cancellation work as in the anchorlm backend: the text is cut here,
and a choice whose client has gone is aborted in the engine. One thread owns the engine.
"""

from __future__ import annotations

import hashlib
import queue
import random
import threading
import traceback
import uuid

import psutil

from anchorlm.format import ANN_CLOSE, ANN_OPEN, annotation_breaks, eos_id
from anchorlm.sample import choose_anchors
from anchorlm.serve.worker import Choice, QueueFull, WorkerDown


def engine_args(pairs: list[str]) -> dict:
    """`--vllm-arg KEY=VALUE` pairs as engine arguments (values read as YAML: 'true', '0.5')."""
    import yaml

    out = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--vllm-arg {p!r}: give KEY=VALUE, e.g. dtype=float32")
        out[key.strip()] = yaml.safe_load(value)
    return out


def require_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "--backend vllm needs vLLM: `pip install anchorlm[vllm]` (on a CPU: scripts/vllm-cpu-env.sh)"
        )


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class _Pool:
    """A request's distinct-anchor draws: k x n annotations drawn, then n chosen to cover them."""

    def __init__(self, choices: list[Choice], size: int):
        self.choices, self.left = choices, size
        self.drafts: list = [None] * size


def _owners(what) -> list[Choice]:
    """The choices a vLLM request serves: a choice's own, or a pool draw's (pool, j) whole request."""
    return what[0].choices if isinstance(what, tuple) else [what]


class VLLMWorker:
    def __init__(
        self, model_dir: str, tok, max_batch: int = 64, max_queue: int = 256, args: dict | None = None
    ):
        require_vllm()
        from transformers import AutoConfig
        from vllm import EngineArgs, LLMEngine

        self.tok, self.max_batch, self.max_queue = tok, max_batch, max_queue
        args = {"max_num_seqs": max_batch, "seed": 0, **(args or {})}  # --vllm-arg may set either
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.engine = LLMEngine.from_engine_args(EngineArgs(model=model_dir, tokenizer=model_dir, **args))
        self.procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]  # vLLM's
        self.max_batch = int(args["max_num_seqs"])
        context = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", 2048)
        self.context = int(getattr(self.engine.model_config, "max_model_len", None) or context)  # vLLM's own
        t = tok.convert_tokens_to_ids
        self.anchored = ANN_OPEN in tok.get_vocab()
        self.open_id, self.close_id = (t(ANN_OPEN), t(ANN_CLOSE)) if self.anchored else (None, None)
        self.eos = eos_id(tok)
        # what ends an annotation: its close, EOS, a line break or tab (unclosed: format.annotation_breaks)
        self.ann_stops = [self.close_id, self.eos, *annotation_breaks(tok)] if self.anchored else []
        self.ann_ends = frozenset(self.ann_stops)
        self.pending: queue.Queue = queue.Queue()
        self.inflight = 0  # choices submitted and not yet answered
        self.lock = threading.Lock()
        self.live: dict[str, tuple] = {}  # vLLM request id -> (what, phase)
        self.thread = threading.Thread(target=self._loop, name="anchorlm-vllm", daemon=True)
        self.thread.start()

    # ---- what the app calls -------------------------------------------------------------------------
    def submit(self, choices: list[Choice], distinct_pool: int = 0) -> None:
        """Queue a request's choices: all or none (QueueFull when more than `max_batch` decode and
        `max_queue` wait already)."""
        if not self.thread.is_alive():
            raise WorkerDown("the decode loop has stopped; restart the server")
        with self.lock:
            waiting = max(0, self.inflight - self.max_batch)
            if waiting + len(choices) > self.max_queue:
                raise QueueFull(f"{waiting} choices are waiting; the queue holds {self.max_queue}")
            self.inflight += len(choices)
        self.pending.put((choices, distinct_pool))

    def close(self) -> None:
        """Stop vLLM's engine, and any of its processes still running after 10 s (on a CPU its
        workers outlived the engine core's shutdown, 2.4 GB each)."""
        core = getattr(self.engine, "engine_core", None)
        shutdown = getattr(self.engine, "shutdown", None) or getattr(core, "shutdown", None)
        try:
            if shutdown is not None:
                shutdown()
        finally:
            _, alive = psutil.wait_procs(self.procs, timeout=10)
            for p in alive:
                p.kill()

    # ---- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            block = not self.live
            try:
                while True:
                    choices, pool = self.pending.get(block=block)
                    block = False
                    self._guarded(choices, self._start_request, choices, pool)
            except queue.Empty:
                pass
            try:
                self._cancel()
                if self.live:
                    for out in self.engine.step():
                        self._output(out)
            except Exception as e:  # a failing step fails the requests in flight; the loop goes on
                try:
                    traceback.print_exc()
                except Exception:
                    pass
                self._fail(f"{type(e).__name__}: {e}")

    def _guarded(self, choices: list[Choice], work, *args) -> None:
        """Run `work` for `choices`; if it raises (vLLM refusing a request, a dead engine), each of
        them not answered yet gets the error, and their requests already in the engine are aborted."""
        try:
            work(*args)
        except Exception as e:
            try:
                traceback.print_exc()
            except Exception:
                pass
            mine = {id(c) for c in choices}
            rids = [r for r, (what, _) in self.live.items() if any(id(c) in mine for c in _owners(what))]
            for r in rids:
                del self.live[r]
            try:
                self.engine.abort_request(rids)
            except Exception:
                pass
            for c in choices:
                if not c.answered:
                    self._answer(c, "error", f"{type(e).__name__}: {e}")

    def _fail(self, message: str) -> None:
        rids, entries, self.live = list(self.live), list(self.live.values()), {}
        failed: set[int] = set()
        for what, _ in entries:
            for c in _owners(what):
                if id(c) not in failed and not c.answered:
                    failed.add(id(c))
                    self._answer(c, "error", message)
        try:
            self.engine.abort_request(rids)
        except Exception:
            pass

    def _answer(self, c: Choice, kind: str, value) -> None:
        """A choice's last event (done or error); it leaves the count of choices in flight, once."""
        if c.answered:
            return
        c.answered = True
        with self.lock:
            self.inflight -= 1
        c.send(kind, value)

    def _add(
        self, what, phase: str, prompt: list[int], max_tokens: int, stop: list[int], c: Choice, seed: int
    ):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rid = f"{phase}-{uuid.uuid4().hex}"
        # ignore_eos: only our stop tokens end a request (vLLM adds the generation config's others)
        params = SamplingParams(temperature=c.temperature, top_p=c.top_p, max_tokens=max(1, max_tokens),
                                stop_token_ids=stop, ignore_eos=True, detokenize=False, seed=seed)  # fmt: skip
        self.engine.add_request(rid, TokensPrompt(prompt_token_ids=prompt), params)
        self.live[rid] = (what, phase)  # only once vLLM took it: step() waits while anything is live
        return rid

    def _start_request(self, choices: list[Choice], pool: int) -> None:
        live = []
        for c in choices:
            if c.cancelled:
                self._answer(c, "done", "cancelled")
            else:
                live.append(c)
        if not live:
            return
        if pool:
            c0 = live[0]
            p = _Pool(live, pool * len(live))
            for j in range(p.left):
                self._add((p, j), "pool", self._head(c0, c0.anchor_start), c0.max_annotation - len(c0.anchor_start),
                          self.ann_stops, c0, _seed("pool", c0.key, j))  # fmt: skip
            return
        for c in live:
            self._start(c)

    def _head(self, c: Choice, annotation: list[int]) -> list[int]:
        return c.prompt + ([self.open_id] + annotation if c.anchored else [])

    def _start(self, c: Choice) -> None:
        c.annotation = list(c.anchor_start)
        if c.anchored and len(c.annotation) < c.max_annotation:
            self._add(c, "annotation", self._head(c, c.annotation), c.max_annotation - len(c.annotation),
                      self.ann_stops, c, _seed("ann", c.key))  # fmt: skip
            return
        if c.anchored:
            c.announce_anchor(self.tok, None)
        self._respond(c)

    def _respond(self, c: Choice) -> None:
        prompt = self._head(c, c.annotation) + ([self.close_id] if c.anchored else [])
        self._add(c, "response", prompt, c.max_tokens, [self.eos], c, _seed("resp", c.key))

    def _cancel(self) -> None:
        """Abort the requests of choices whose clients have gone (a distinct-anchor pool's draws when
        all of its choices have)."""
        gone = [
            r for r, (what, _) in self.live.items()
            if all(c.cancelled for c in _owners(what))
        ]  # fmt: skip
        if gone:
            self.engine.abort_request(gone)
            for r in gone:
                what, _ = self.live.pop(r)
                for c in _owners(what):
                    self._answer(c, "done", "cancelled")

    def _output(self, out) -> None:
        entry = self.live.get(out.request_id)
        if entry is None:
            return
        what, phase = entry
        self._guarded(_owners(what), self._advance, out, what, phase)

    def _advance(self, out, what, phase: str) -> None:
        o = out.outputs[0]
        ids = list(o.token_ids)
        if out.finished and o.finish_reason not in ("stop", "length"):  # aborted or failed in vLLM
            self.live.pop(out.request_id, None)
            for c in _owners(what):
                self._answer(c, "error", f"vLLM ended the request: {o.finish_reason}")
            return
        if phase == "response":
            self._response(out.request_id, what, ids, out.finished, o.finish_reason)
            return
        if not out.finished:
            return
        del self.live[out.request_id]
        cut = next((k for k, t in enumerate(ids) if t in self.ann_ends), None)
        drawn, stop = (
            (ids[:cut], ids[cut]) if cut is not None else (ids, o.stop_reason)
        )  # a stop token left out
        if phase == "pool":
            p, j = what
            c0 = p.choices[0]
            p.drafts[j] = (c0.anchor_start + drawn, stop == self.close_id)
            p.left -= 1
            if p.left == 0:
                self._chosen(p)
            return
        what.annotation += drawn
        what.announce_anchor(self.tok, stop == self.close_id)
        if what.cancelled:
            self._answer(what, "done", "cancelled")
            return
        self._respond(what)

    def _chosen(self, p: _Pool) -> None:
        texts = [self.tok.decode(ids, skip_special_tokens=False).strip() for ids, _ in p.drafts]
        picks = choose_anchors(texts, len(p.choices), random.Random(p.choices[0].key))
        for c, i in zip(p.choices, picks):
            c.anchor_start, c.max_annotation = p.drafts[i][0], len(p.drafts[i][0])  # fed whole, then closed
            c.closed = p.drafts[i][1]
            if c.cancelled:
                self._answer(c, "done", "cancelled")
            else:
                self._start(c)

    def _response(self, rid: str, c: Choice, ids: list[int], finished: bool, reason: str | None) -> None:
        eos = self.eos in ids
        if c.take_response(self.tok, ids[: ids.index(self.eos)] if eos else ids):
            if not finished:
                self.engine.abort_request([rid])
            self._finish(rid, c, "stop")
        elif finished or eos:
            self._finish(rid, c, "stop" if eos or reason == "stop" else "length")
        else:
            c.flush()

    def _finish(self, rid: str, c: Choice, reason: str) -> None:
        self.live.pop(rid, None)
        c.flush(final=True)
        self._answer(c, "done", reason)
