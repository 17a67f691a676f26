"""`anchorlm serve`: an OpenAI-compatible HTTP server (FastAPI, uvicorn) for any model anchorlm
loads, anchored or not.

    GET  /v1/models
    POST /v1/chat/completions      messages, n, temperature, top_p, max_tokens, seed, stop, stream
    POST /v1/completions           prompt, the same

For a model with annotation tokens each choice writes its own annotation first; the server returns
only the response as `content` (`text`), and the annotation in the choice's extra field `anchor`:
{"text": "topic:food keyword:bread", "tags": [...], "well_formed": true, "tokens": 7}. Request fields
of anchorlm's own (`anchor`, `anchors`, `anchor_strategy`, `anchor_pool`) fix or spread the
annotations (anchorlm.serve.protocol). Choices decode in batches shared with other requests
(anchorlm.serve.worker); a full queue answers 429, a client that leaves stops its choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from anchorlm.engine import row_key
from anchorlm.format import encode_chat, encode_prompt
from anchorlm.models import hf_dir, load_model, load_tokenizer
from anchorlm.precision import dtype
from anchorlm.prepack import prepack
from anchorlm.serve.protocol import ChatRequest, CompletionRequest, ServeError, parse
from anchorlm.serve.vllm_worker import VLLMWorker, engine_args, require_vllm
from anchorlm.serve.worker import Choice, QueueFull, Worker, WorkerDown, anchor_ids

DEFAULT_MAX_TOKENS = 256
MAX_BODY = 8 * 2**20  # bytes of a request body at most
GREEDY_BELOW = 1e-4  # a temperature this low is drawn as 0 (the most likely token): 1/T would overflow
ANNOTATION_ROOM = 24  # annotation tokens a choice may draw after its given start


def serve(model_spec: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          name: str | None = None, precision: str = "auto", max_batch: int = 64, max_queue: int = 256,
          backend: str = "anchorlm", vllm_args: list[str] = ()) -> None:  # fmt: skip
    """Load the model and serve it with uvicorn until interrupted: decoded by anchorlm's loop, or
    by vLLM's engine (`backend` 'vllm', with engine arguments `vllm_args` as KEY=VALUE)."""
    import uvicorn

    sock = bind(host, port)
    name = name or Path(str(model_spec)).name.removesuffix(".gguf")
    how = backend
    if backend == "vllm":
        require_vllm()
        args = engine_args(list(vllm_args))
        model_dir = hf_dir(str(model_spec))  # vLLM reads no GGUF: a GGUF model is dequantised once
        tok = load_tokenizer(model_dir, tokens="none")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        app = create_app(
            None, tok, name, api_key, worker=VLLMWorker(model_dir, tok, max_batch, max_queue, args)
        )
    else:
        import torch

        if vllm_args:
            raise ValueError("--vllm-arg goes with --backend vllm")

        def prepared():
            model, tok = load_model(model_spec, tokens="none")
            device = "cuda" if torch.cuda.is_available() else "cpu"
            model.to(device=device, dtype=dtype(precision, model)).eval()
            # on a CPU: bf16 the same products, fp32 within rounding (for the server's life)
            packed, _ = prepack(model, max_batch)
            return model, tok, packed

        model, tok, packed = off_main_thread(prepared)
        if packed:
            how += f"; the weights of {packed} linear layers laid out once for oneDNN"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        app = create_app(model, tok, name, api_key, max_batch, max_queue)
    bound = sock.getsockname()[1]
    print(f"anchorlm serve: {name} on http://{host}:{bound}/v1 ({how})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    try:  # as uvicorn.run runs it, on the socket bound above
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down (and re-raises the signal)
        pass
    if not server.started:
        raise RuntimeError(f"the server on {host}:{bound} did not start (its error is above)")


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: a port in use is said at once, and the line
    printed at start names the port held (`port` 0: any free one). Not inherited by child processes
    (vLLM's engine), as every socket Python makes."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    return sock


def off_main_thread(fn):
    """`fn()` run on a thread of its own that has ended when this returns (its value, or its error
    raised here). The server decodes on its worker thread, and torch's parallel work (OpenMP) done
    before on the main thread, which lives as long as the process, made every later decode step on
    the worker thread slower: loading, casting and prepacking the demo's AAT model on the main thread
    left its decoding of 16 rows on another thread at about 0.7x in bf16 (about 175 against 250 tok/s)
    and 0.8x in fp32, in side runs on an AMD EPYC with 2 cores; done on a thread that has ended, the
    decoding ran at full speed. So the model is made here, and nothing on the main thread (uvicorn's
    event loop) runs torch's parallel work.

    Ctrl-C while it runs is raised here at once (the main thread waits in short joins, so it runs
    Python's signal handler whichever thread the signal reached) and the load is left to a daemon
    thread that does not hold the process up: loading SmolLM2 takes seconds, a larger model minutes."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            out["error"] = e

    t = threading.Thread(target=run, name="anchorlm-load", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
    if "error" in out:
        raise out["error"]
    return out["value"]


def create_app(model, tok, name: str, api_key: str | None = None, max_batch: int = 64, max_queue: int = 256,
               worker=None) -> FastAPI:  # fmt: skip
    """The app serving `model` (with tokenizer `tok`) as model id `name`, decoded by anchorlm's loop
    or by a given `worker` with the same interface (the vLLM backend)."""
    worker = worker or Worker(model, tok, max_batch=max_batch, max_queue=max_queue)
    context = worker.context
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        close = getattr(worker, "close", None)  # vLLM's engine processes end with the server
        if close is not None:  # (here: uvicorn re-raises SIGTERM after shutdown, so no `finally` runs)
            close()

    app = FastAPI(title="anchorlm serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.worker = worker

    @app.exception_handler(ServeError)
    async def _refused(request: Request, e: ServeError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(404)
    async def _no_route(request: Request, e):
        return JSONResponse(ServeError(404, f"no route {request.url.path}").body(), status_code=404)

    @app.exception_handler(405)
    async def _no_method(request: Request, e):
        return JSONResponse(ServeError(405, f"{request.method} is not allowed here").body(), status_code=405)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").encode("latin-1", "replace")  # headers are bytes
        if not secrets.compare_digest(given, f"Bearer {api_key}".encode()):
            raise ServeError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                             kind="authentication_error", code="invalid_api_key")  # fmt: skip

    async def body(request: Request, cls):
        check_key(request)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ServeError(413, f"the body has {len(raw)} bytes; this server takes {MAX_BODY} at most")
        try:
            data = json.loads(raw or b"null")
            json.dumps(data, ensure_ascii=False).encode()  # a lone surrogate ("\ud800") is not text
        except (ValueError, RecursionError) as e:  # JSON, UTF-8 and surrogate errors are ValueErrors
            raise ServeError(400, f"the body is not JSON of valid text: {str(e)[:200]}") from None
        req = parse(cls, data)
        if req.model != name:
            raise ServeError(404, f"model {req.model!r} is not served here; this server serves {name!r}",
                             "model", code="model_not_found")  # fmt: skip
        return req

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "anchorlm"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await body(request, ChatRequest)
        try:
            prompt = encode_chat(tok, [{"role": m.role, "content": m.text()} for m in req.messages])
        except ValueError as e:
            raise ServeError(400, str(e), "messages") from None
        return await complete(request, req, prompt, "chat.completion")

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await body(request, CompletionRequest)
        return await complete(request, req, encode_prompt(tok, req.prompt), "text_completion")

    async def complete(request: Request, req, prompt: list[int], kind: str):
        # each choice's given annotation start, tokenised once (a model without annotation tokens has none)
        starts = [anchor_ids(tok, a) if worker.anchored else [] for a in req.anchors or [req.anchor] * req.n]
        # an anchored choice also holds <|ann|>, its annotation (given start and drawn) and <|/ann|>
        room = context - len(prompt) - (max(map(len, starts)) + ANNOTATION_ROOM + 2 if worker.anchored else 0)
        if room < 1:
            raise ServeError(400, f"the prompt has {len(prompt)} tokens; the model's context holds {context}",
                             "messages" if kind.startswith("chat") else "prompt", code="context_length_exceeded")  # fmt: skip
        limit = req.limit()
        if limit is not None and limit > room:
            raise ServeError(400, f"max_tokens {limit} is past the model's context ({room} tokens after the prompt)",
                             "max_tokens", code="context_length_exceeded")  # fmt: skip
        if req.n > worker.max_queue:
            raise ServeError(
                400, f"n = {req.n} is more than this server queues ({worker.max_queue} choices)", "n"
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(8), "little")
        temperature = 0.0 if req.temperature < GREEDY_BELOW else req.temperature
        choices = []
        for i in range(req.n):

            def emit(kind_, value, i=i):
                loop.call_soon_threadsafe(events.put_nowait, (i, kind_, value))

            start = starts[i]
            choices.append(Choice(
                prompt=prompt, key=_key(seed, i), temperature=temperature, top_p=req.top_p,
                max_tokens=limit or min(DEFAULT_MAX_TOKENS, room), stops=req.stop or [], emit=emit,
                anchor_start=start, anchored=worker.anchored, max_annotation=len(start) + ANNOTATION_ROOM,
            ))  # fmt: skip
        distinct = req.anchor_pool if worker.anchored and req.anchor_strategy == "distinct" else 0
        try:
            worker.submit(choices, distinct)
        except QueueFull as e:
            raise ServeError(429, f"the server is busy: {e}; retry later", kind="rate_limit_error") from None
        except WorkerDown as e:
            raise ServeError(503, str(e), kind="server_error") from None
        rid = f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}"
        meta = {"id": rid, "created": int(time.time()), "model": name}
        if req.stream:
            return StreamingResponse(_stream(request, req, choices, events, meta, kind, len(prompt)),
                                     media_type="text/event-stream")  # fmt: skip
        done = await _collect(request, choices, events)
        if done is None:  # the client has gone: nobody reads an answer
            return Response(status_code=499)
        return _response(req, choices, done, meta, kind, len(prompt))

    return app


def _key(seed: int, i: int) -> int:
    return row_key("serve", seed, i)


async def _collect(request: Request, choices: list[Choice], events: asyncio.Queue) -> dict | None:
    """Wait for every choice to finish; a client that leaves (checked twice a second, whether or
    not text is flowing) cancels them, and None comes back."""
    done, anchors = {}, {}
    loop = asyncio.get_running_loop()
    check = loop.time() + 0.5
    while len(done) < len(choices):
        try:
            i, kind, value = await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            kind = None
        if kind == "anchor":
            anchors[i] = value
        elif kind == "error":
            raise ServeError(500, f"the decode loop failed: {value}", kind="server_error")
        elif kind == "done":
            done[i] = value
        if loop.time() >= check:
            check = loop.time() + 0.5
            if await request.is_disconnected():
                for c in choices:
                    c.cancelled = True
                return None
    return {"reasons": done, "anchors": anchors}


def _usage(choices: list[Choice], prompt_tokens: int) -> dict:
    completion = sum(len(c.response) + max(0, len(c.annotation) - c.given) for c in choices)  # drawn tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _finish(reason: str) -> str:
    return "stop" if reason in ("stop", "cancelled") else reason


def _response(req, choices, done, meta, kind, prompt_tokens) -> dict:
    out = []
    for i, c in enumerate(choices):
        ch = {"index": i, "finish_reason": _finish(done["reasons"][i]), "logprobs": None}
        if kind == "chat.completion":
            ch["message"] = {"role": "assistant", "content": c.text}
        else:
            ch["text"] = c.text
        if i in done["anchors"]:
            ch["anchor"] = done["anchors"][i]
        out.append(ch)
    return {**meta, "object": kind, "choices": out, "usage": _usage(choices, prompt_tokens)}


async def _stream(request, req, choices, events, meta, kind, prompt_tokens):
    """Server-sent events: a chunk per piece of text of any choice, a last one per choice with its
    finish reason, usage where asked, then [DONE]."""
    obj = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
    left = len(choices)

    def chunk(i, delta=None, finish=None, anchor=None):
        ch = {"index": i, "finish_reason": finish, "logprobs": None}
        if kind == "chat.completion":
            ch["delta"] = delta or {}
        else:
            ch["text"] = (delta or {}).get("content", "")
        if anchor is not None:
            ch["anchor"] = anchor
        return f"data: {json.dumps({**meta, 'object': obj, 'choices': [ch]})}\n\n"

    started = set()
    loop = asyncio.get_running_loop()
    check = loop.time() + 0.5
    try:
        while left:
            try:
                i, what, value = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                what = None
            if loop.time() >= check:
                check = loop.time() + 0.5
                if await request.is_disconnected():
                    return
            if what is None:
                continue
            if i not in started and kind == "chat.completion":
                started.add(i)
                yield chunk(i, {"role": "assistant", "content": ""})
            if what == "anchor":
                yield chunk(i, {}, anchor=value)
            elif what == "delta":
                yield chunk(i, {"content": value})
            elif what == "error":  # the stream has begun: the error goes as an event, then the end
                body = ServeError(500, f"the decode loop failed: {value}", kind="server_error").body()
                yield f"data: {json.dumps(body)}\n\n"
                return
            else:
                left -= 1
                yield chunk(i, {}, finish=_finish(value))
        if req.stream_options and req.stream_options.include_usage:
            yield f"data: {json.dumps({**meta, 'object': obj, 'choices': [], 'usage': _usage(choices, prompt_tokens)})}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # closed, cancelled or gone: what has not finished stops
        if left:
            for c in choices:
                c.cancelled = True
