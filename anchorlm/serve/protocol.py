"""The OpenAI-compatible request bodies `anchorlm serve` takes, checked by pydantic, and the errors
it answers with (OpenAI's shape: {"error": {"message", "type", "param", "code"}}).

anchorlm's own request fields (other servers ignore them; the `openai` client sends them with
`extra_body`):

    anchor           "topic:science": every choice's annotation starts with these tags and the
                     model completes it
    anchors          ["topic:food", "topic:love", ...]: one annotation start per choice (n of them)
    anchor_strategy  "sample" (default): each choice writes its own annotation;
                     "distinct": the n choices get distinct annotations, chosen from a pool of
                     `anchor_pool` x n drawn for the request, topics not yet chosen first
    anchor_pool      how many annotations per choice the distinct strategy draws (default 4)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anchorlm.format import parse_tags

MAX_N = 64  # choices per request
MAX_STOP = 4  # stop sequences per request


class ServeError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat message: text content, or a list of text parts (joined). The fields the `openai`
    client writes when a caller sends back an assistant message it received are taken when null."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None
    refusal: None = None
    tool_calls: None = None
    function_call: None = None
    audio: None = None
    annotations: None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class Sampling(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    anchor: str | None = None
    anchors: list[str] | None = None
    anchor_strategy: Literal["sample", "distinct"] = "sample"
    anchor_pool: int = Field(4, ge=1, le=16)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOP} non-empty strings")
        return stops

    @field_validator("anchor")
    @classmethod
    def _anchor(cls, v):
        if v is not None and parse_tags(v) is None:
            raise ValueError("anchor must be key:value tags, e.g. 'topic:science'")
        return v

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, v):
        if v is not None and any(parse_tags(a) is None for a in v):
            raise ValueError("anchors must be a list of key:value tags, one per choice")
        return v

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str = Field(min_length=1)


def parse(cls, data) -> Sampling:
    """A request body as `cls`, or a ServeError naming the field."""
    if not isinstance(data, dict):
        raise ServeError(400, "the request body must be a JSON object")
    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        err = max(e.errors(include_url=False), key=lambda x: len(x["loc"]))  # a union's most specific
        tags = ("str", "int", "float", "bool", "none")  # the union member a branch's error names
        param = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and (p in tags or "[" in p)))
        param = param or None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {param!r}"
        raise ServeError(400, f"{param}: {msg}" if param else msg, param) from None
    if req.anchors is not None and len(req.anchors) != req.n:
        raise ServeError(
            400, f"anchors lists {len(req.anchors)} annotation starts for n = {req.n} choices", "anchors"
        )
    if req.anchors is not None and req.anchor_strategy == "distinct":
        raise ServeError(
            400, "anchors fixes each choice's annotation; anchor_strategy 'distinct' chooses them: give one",
            "anchor_strategy",
        )  # fmt: skip
    if req.anchor and req.anchors:
        raise ServeError(
            400, "give either anchor (every choice) or anchors (one per choice), not both", "anchor"
        )
    return req
