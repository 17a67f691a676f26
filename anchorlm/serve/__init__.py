"""`anchorlm serve`: a model behind the OpenAI-compatible API every evaluation and chat tool speaks.

protocol.py   the request bodies (pydantic) and OpenAI-style errors
worker.py     the decode loop shared by every request: continuous batching, per-choice streams
app.py        the FastAPI app: /v1/models, /v1/chat/completions, /v1/completions, streaming
client.py     `anchorlm noveltybench`: NoveltyBench's sampling call against any such endpoint
"""
