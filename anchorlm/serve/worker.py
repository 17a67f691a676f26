"""The server's decode loop: one thread owns the model and decodes every choice of every request in
shared batches (anchorlm.engine's batch, its per-row random streams and its draw).

Each choice is a row of its own. Choices join the running batch at the next step when their prompts
fit into its cache (`engine._Batch.can_join`) and the batch has fewer than `max_batch` rows (as many
as there is room for; a request's other choices follow), else they start the next batch as soon as
the running one empties: no request waits for another request to finish while there is room. The
queue of choices not yet decoding is bounded: past `max_queue` a request is refused at once (the app
answers 429). A choice whose client has gone is cancelled: it draws nothing more from the next step
on, and its row leaves the batch at the next compaction.

Each choice has its own settings (temperature, top-p, token cap, stop sequences), its own random
stream (named by the request's seed and the choice's index, so the same seed gives the same choices
in any batch, up to the floating-point differences of another batch shape) and, for an anchored
model, an annotation phase: the row writes its own annotation (or completes a given start) until
`<|/ann|>`, then its response. Text goes out as deltas that are never taken back: a character not
yet whole and the start of a stop sequence wait until they are decided. A step that raises fails
the requests in flight with an error event, and the loop goes on.
"""

from __future__ import annotations

import queue
import random
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from anchorlm import engine
from anchorlm.allocator import keep_freed_memory
from anchorlm.engine import ANNOTATION, CUT, DONE, RESPONSE, draw, row_key, uniforms
from anchorlm.format import ANN_CLOSE, ANN_OPEN, annotation_breaks, encode_annotation, eos_id, parse_tags
from anchorlm.sample import choose_anchors, clean_text


@dataclass
class Choice:
    """One choice of one request: what it decodes, and where its events go."""

    prompt: list[int]
    key: int
    temperature: float
    top_p: float
    max_tokens: int
    stops: list[str]
    emit: Callable[[str, object], None]  # (kind, value): 'anchor', 'delta', 'done', 'error'
    anchor_start: list[int] = field(default_factory=list)  # the annotation's given first tokens
    anchored: bool = False
    max_annotation: int = 24  # tokens of annotation at most, its given start included
    closed: bool | None = None  # a chosen (distinct) annotation: whether the model closed it
    annotation: list[int] = field(default_factory=list)
    response: list[int] = field(default_factory=list)
    text: str = ""  # the response's text so far
    sent: str = ""  # the part of it already sent as deltas
    given: int = -1  # tokens of annotation start the request gave (the rest were drawn: usage)
    queued: bool = False  # counted in the worker's queue
    cancelled: bool = False
    answered: bool = False  # its last event sent (the vLLM backend's count of choices in flight)

    def __post_init__(self):
        if self.given < 0:
            self.given = len(self.anchor_start)

    def take_response(self, tok, ids: list[int]) -> bool:
        """The response so far: its text, cut at the first stop sequence; True when one was hit."""
        self.response = ids
        self.text = clean_text(tok, ids)
        hit = min((self.text.find(s) for s in self.stops or () if s in self.text), default=-1)
        if hit >= 0:
            self.text = self.text[:hit]
        return hit >= 0

    def flush(self, final: bool = False) -> None:
        """Send the text not sent yet, less what may still change unless `final`; text already sent
        is never taken back (a text that no longer starts with it waits for the finish)."""
        upto = len(self.text) if final else len(self.text) - held_back(self.text, self.stops or [])
        if self.text.startswith(self.sent) and upto > len(self.sent):
            self.send("delta", self.text[len(self.sent) : upto])
            self.sent = self.text[:upto]

    def announce_anchor(self, tok, closed: bool | None) -> None:
        """The 'anchor' event: the annotation's text, tags and whether it was closed and well-formed
        (`closed` None: as recorded when a distinct annotation was chosen)."""
        raw = tok.decode(self.annotation, skip_special_tokens=False).strip()
        tags = parse_tags(raw)
        ok = bool(tags) and bool(closed if closed is not None else self.closed)
        self.send("anchor", {"text": raw, "tags": tags, "well_formed": ok, "tokens": len(self.annotation)})

    def send(self, kind: str, value) -> None:
        """An event to the request; a request whose loop has gone takes nothing, and the decode
        loop goes on."""
        try:
            self.emit(kind, value)
        except Exception:
            self.cancelled = True


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` may still change: a character not yet whole (U+FFFD
    from a token that ends mid-character) or the start of a stop sequence."""
    n = len(text) - len(text.rstrip("\ufffd"))
    body = text[: len(text) - n]
    part = max((k for s in stops for k in range(1, len(s)) if body.endswith(s[:k])), default=0)
    return n + part


class QueueFull(Exception):
    pass


class WorkerDown(Exception):
    pass


class Worker:
    def __init__(self, model, tok, max_batch: int = 64, max_queue: int = 256, window: int = 512):
        self.model, self.tok = model, tok
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, window
        self.context = getattr(model.config, "max_position_embeddings", 2048)
        t = tok.convert_tokens_to_ids
        self.anchored = ANN_OPEN in tok.get_vocab()
        self.open_id, self.close_id = (t(ANN_OPEN), t(ANN_CLOSE)) if self.anchored else (None, None)
        self.eos = eos_id(tok)
        # what ends an annotation: its close, EOS, a line break or tab (unclosed: format.annotation_breaks)
        self.ann_ends = frozenset((self.close_id, self.eos, *annotation_breaks(tok))) if self.anchored else frozenset()
        self.pending: queue.Queue = queue.Queue()
        self.waiting = 0  # choices queued, not yet decoding
        self.lock = threading.Lock()
        keep_freed_memory()  # each step reuses the last step's memory (anchorlm/allocator.py)
        self.thread = threading.Thread(target=self._loop, name="anchorlm-decode", daemon=True)
        self.thread.start()

    # ---- what the app calls -------------------------------------------------------------------------
    def submit(self, choices: list[Choice], distinct_pool: int = 0) -> None:
        """Queue a request's choices (all or none: QueueFull past `max_queue`). With `distinct_pool`
        k, the choices' annotations are chosen first from k x n drawn for the request."""
        if not self.thread.is_alive():
            raise WorkerDown("the decode loop has stopped; restart the server")
        with self.lock:
            if self.waiting + len(choices) > self.max_queue:
                raise QueueFull(f"{self.waiting} choices are waiting; the queue holds {self.max_queue}")
            self.waiting += len(choices)
            for c in choices:
                c.queued = True
        self.pending.put((choices, distinct_pool))

    # ---- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        batch, rows, backlog = None, {}, []
        while True:
            block = batch is None and not backlog
            try:
                while True:
                    backlog.append(self.pending.get(block=block, timeout=None if block else 0))
                    block = False
            except queue.Empty:
                pass
            try:
                batch, rows, backlog = self._admit(batch, rows, backlog)
                if batch is None:
                    continue
                self._step(batch, rows)
                alive = np.array([rows[r][1] != DONE for r in batch.rows])
                if not alive.any():
                    batch, rows = None, {}
                else:
                    if batch.compact(alive, 0.25):  # rows left: their columns may be free to drop
                        batch.trim()
            except Exception as e:  # a bug must fail the requests in flight, not hang them and the next
                try:
                    traceback.print_exc()
                except Exception:
                    pass
                self._fail(rows, backlog, f"{type(e).__name__}: {e}")
                batch, rows, backlog = None, {}, []

    def _fail(self, rows, backlog, message: str) -> None:
        for c, phase, _ in rows.values():
            if phase != DONE:
                c.send("error", message)
        for choices, _ in backlog:
            for c in choices:
                self._leave(c)
                c.send("error", message)

    def _admit(self, batch, rows, backlog):
        """Start a batch with what waits, or join what fits into the running one: a request's
        choices are rows of their own, so as many as there is room for go in now, the rest later."""
        keep = []
        for choices, pool in backlog:
            live = []
            for c in choices:
                if c.cancelled:  # cancelled while waiting: answered here, never decoded
                    self._leave(c)
                    c.send("done", "cancelled")
                else:
                    live.append(c)
            if pool and live:
                self._choose_anchors(live, pool)
            room = self.max_batch - (len(batch.rows) if batch is not None else 0)
            take, rest = live[: max(room, 0)], live[max(room, 0) :]
            ids: list[int] = []  # the rows the taken choices became
            if take:
                seqs = [self._start(c) for c in take]
                steps = max(c.max_tokens + (c.max_annotation + 1 if c.anchored else 0) for c in take) + 1
                if batch is None:
                    batch = engine._Batch(
                        self.model, seqs, len(seqs), self.tok.pad_token_id, max(steps, self.window)
                    )
                    ids = list(range(len(seqs)))
                elif batch.can_join(seqs, steps):
                    ids = batch.join(self.model, seqs, self.tok.pad_token_id)
                else:
                    rest = live
            for i, c in zip(ids, take):
                self._leave(c)
                c.annotation = list(c.anchor_start)
                phase = (
                    RESPONSE
                    if not c.anchored
                    else CUT
                    if len(c.annotation) >= c.max_annotation
                    else ANNOTATION
                )
                rows[i] = [c, phase, 0]  # choice, phase, draws used
            if rest:
                keep.append((rest, 0))
        return batch, rows, keep

    def _leave(self, c: Choice) -> None:
        """A choice leaves the queue (admitted, cancelled or failed): counted once."""
        with self.lock:
            if c.queued:
                c.queued = False
                self.waiting -= 1

    def _start(self, c: Choice) -> list[int]:
        return c.prompt + ([self.open_id] + c.anchor_start if c.anchored else [])

    def _choose_anchors(self, choices: list[Choice], pool: int) -> None:
        """Distinct annotations for a request's choices: k x n drawn (in batches of at most
        max_batch rows), n chosen to cover them."""
        n = len(choices)
        c0 = choices[0]
        s = engine.Settings(temperature=c0.temperature, top_p=c0.top_p,
                            max_new_tokens=c0.max_annotation - len(c0.anchor_start),
                            stop=self.ann_ends)  # fmt: skip
        keys = [row_key("pool", c0.key, j) for j in range(pool * n)]
        outs = []
        for a in range(0, len(keys), self.max_batch):
            part = keys[a : a + self.max_batch]
            outs += engine.generate(self.model, [self._start(c0)] * len(part), part, s, self.tok.pad_token_id)
        drafts = [(c0.anchor_start + o.response, o.stop == self.close_id) for o in outs]
        texts = [self.tok.decode(ids, skip_special_tokens=False).strip() for ids, _ in drafts]
        for c, i in zip(choices, choose_anchors(texts, n, random.Random(c0.key))):
            c.anchor_start, c.max_annotation = drafts[i][0], len(drafts[i][0])  # fed whole, then closed
            c.closed = drafts[i][1]

    def _step(self, batch, rows) -> None:
        logits = batch.step()
        who, groups = [], {}
        for pos, r in enumerate(batch.rows):
            c, phase, _ = rows[r]
            if phase == DONE:
                continue
            if c.cancelled:
                rows[r][1] = DONE
                c.send("done", "cancelled")
                continue
            if phase == CUT:
                self._close(batch, rows, r)
                continue
            who.append((pos, r))
            groups.setdefault((c.temperature, c.top_p), []).append(len(who) - 1)
        if not who:
            return
        tokens = [0] * len(who)
        for (temp, top_p), idx in groups.items():
            pos = [who[i][0] for i in idx]
            keys = np.array([rows[who[i][1]][0].key & ((1 << 64) - 1) for i in idx], dtype=np.uint64)
            drawn = np.array([rows[who[i][1]][2] for i in idx], dtype=np.int64)
            got = draw(logits[batch.index(np.array(pos))], temp, top_p, uniforms(keys, drawn)).tolist()
            for i, t in zip(idx, got):
                tokens[i] = t
        for (_, r), t in zip(who, tokens):
            rows[r][2] += 1
            self._token(batch, rows, r, t)

    def _token(self, batch, rows, r: int, t: int) -> None:
        c, phase, _ = rows[r]
        if phase == ANNOTATION:
            if t in self.ann_ends:  # the close, or EOS or a line break: unclosed
                self._close(batch, rows, r, closed=t == self.close_id)
                return
            c.annotation.append(t)
            batch.feed(r, t)
            if len(c.annotation) >= c.max_annotation:
                rows[r][1] = CUT
            return
        if t == self.eos:
            self._finish(rows, r, "stop")
            return
        if c.take_response(self.tok, c.response + [t]):
            self._finish(rows, r, "stop")
            return
        if len(c.response) >= c.max_tokens:
            self._finish(rows, r, "length")
            return
        c.flush()
        batch.feed(r, t)

    def _close(self, batch, rows, r: int, closed: bool | None = None) -> None:
        rows[r][0].announce_anchor(self.tok, closed)
        batch.feed(r, self.close_id)
        rows[r][1] = RESPONSE

    def _finish(self, rows, r: int, reason: str) -> None:
        rows[r][1] = DONE
        c = rows[r][0]
        c.flush(final=True)
        c.send("done", reason)


def anchor_ids(tok, tags: str | None) -> list[int]:
    """The tokens of an annotation's given start ('topic:science' -> the tag's ids, no delimiters)."""
    return encode_annotation(tok, tags.split())[0][1:-1] if tags else []
