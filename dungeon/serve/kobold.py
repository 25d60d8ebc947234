"""The KoboldAI-compatible text API (United spec 1.2.x, as KoboldCpp serves it).

KoboldAI-API front-ends (SillyTavern, KoboldAI Lite, Agnaistic) can use dungeon's model as their
backend through these endpoints; docs/serve.md lists which request fields are honoured and
which are accepted and ignored. Generation goes through the server's model queue: beyond its
bound the answer is KoboldCpp's busy reply, 503 ``{"detail": {"msg": ..., "type":
"service_unavailable"}}``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dungeon import __version__
from dungeon.generator import SamplingSettings

from .queue import END, Channel, Job, QueueClosed, QueueFull
from .security import ApiError, require_key
from .textgen import TextRequest, fit_lengths, run_completion, seeds_for, token_ids

KOBOLD_API_VERSION = "1.2.5"
KOBOLDCPP_VERSION = "1.80.0"
"""The KoboldCpp version we answer like: front-ends enable SSE streaming, tokencount and
genkey aborts from this version on (Agnaistic streams from 1.30)."""
MAX_PROMPT_CHARS = 400_000
MAX_STOPS = 32

router = APIRouter(dependencies=[Depends(require_key)])


class KoboldGenerate(BaseModel):
    """The fields of /api/v1/generate that dungeon honours; any other field is accepted and
    ignored (front-ends send many, e.g. tfs, top_a, sampler_order, rep_pen_slope)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    memory: str = Field("", max_length=MAX_PROMPT_CHARS)
    """KoboldCpp's memory: text put in front of the prompt and never cut away."""
    max_context_length: int | None = Field(None, ge=1)
    max_length: int = Field(180, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = 0.92
    top_k: int = Field(100, ge=0)
    typical: float = 1.0
    rep_pen: float = 1.0
    rep_pen_range: int = Field(320, ge=0)
    min_length: int = Field(0, ge=0)
    stop_sequence: list[str] | None = Field(None, max_length=MAX_STOPS)
    sampler_seed: int | None = None
    n: int = Field(1, ge=1, le=5)
    genkey: str | None = Field(None, max_length=128)


def kobold_settings(body: KoboldGenerate, max_new: int) -> SamplingSettings:
    """Kobold's sampler fields as our SamplingSettings, off-values and out-of-range values
    brought to the nearest thing we do (KoboldCpp is lenient too)."""
    top_p = body.top_p if 0 < body.top_p <= 1 else 1.0
    typical = body.typical if 0 < body.typical <= 1 else 1.0
    return SamplingSettings(
        temperature=min(body.temperature, 5.0),
        top_k=body.top_k,
        top_p=top_p,
        typical_p=typical,
        repetition_penalty=min(max(body.rep_pen, 1.0), 3.0),
        repetition_window=body.rep_pen_range,
        max_new_tokens=max_new,
        min_new_tokens=min(body.min_length, max_new),
    )


def text_request(state, body: KoboldGenerate) -> TextRequest:
    ctx, new = fit_lengths(state.generator, body.max_context_length, body.max_length)
    stops = tuple(s for s in (body.stop_sequence or []) if s)
    if any(len(s) > 200 for s in stops):
        raise ApiError(422, "stop_sequence: each stop string may have at most 200 characters")
    return TextRequest(
        prompt=body.memory + body.prompt,
        settings=kobold_settings(body, new),
        stop=stops,
        seeds=seeds_for(body.sampler_seed, body.n),
        max_context=ctx,
    )


def _client(request: Request) -> str:
    return "text:" + (request.client.host if request.client else "?")


def submit(state, request: Request, fn, key: str | None) -> Job:
    try:
        return state.queue.submit(_client(request), fn, kind="text", key=key)
    except QueueFull as err:
        raise ApiError(
            503,
            "Server is busy; please try again later.",
            "service_unavailable",
            {"Retry-After": str(err.retry_after)},
        ) from None
    except QueueClosed as err:
        raise ApiError(503, str(err), "service_unavailable") from None


@router.post("/api/v1/generate")
@router.post("/api/latest/generate", include_in_schema=False)
async def generate(body: KoboldGenerate, request: Request) -> dict:
    """Write text after the prompt: ``{"results": [{"text", "finish_reason"}]}``."""
    state = request.app.state.dungeon
    text = text_request(state, body)
    job = submit(
        state, request, lambda job: run_completion(state.generator, text, job), body.genkey
    )
    try:
        done = await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        job.cancel.set()
        raise
    return {"results": [{"text": c.text, "finish_reason": c.finish_reason} for c in done]}


@router.post("/api/extra/generate/stream")
async def generate_stream(body: KoboldGenerate, request: Request) -> StreamingResponse:
    """The same as generate, as server-sent events: ``event: message`` then
    ``data: {"token": ..., "finish_reason": ...}``; the last one has the finish reason.
    Streams the first output only (n is ignored here, as in KoboldCpp)."""
    state = request.app.state.dungeon
    text = replace(text_request(state, body), seeds=seeds_for(body.sampler_seed, 1))
    channel = Channel()

    def work(job: Job):
        return run_completion(state.generator, text, job, lambda _row, piece: channel.put(piece))

    job = submit(state, request, work, body.genkey)
    channel.end_with(job)

    async def events():
        try:
            while (piece := await channel.get()) is not END:
                yield _sse({"token": piece, "finish_reason": None})
            try:
                done = job.future.result()
                reason = done[0].finish_reason
            except Exception:
                reason = "stop"  # aborted or failed: end the stream the way clients expect
            yield _sse({"token": "", "finish_reason": reason})
        finally:
            job.cancel.set()  # the client went away: stop writing (no-op when done)

    return StreamingResponse(events(), media_type="text/event-stream", headers=_NO_CACHE)


_NO_CACHE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(data: dict) -> str:
    return f"event: message\ndata: {json.dumps(data)}\n\n"


class GenKey(BaseModel):
    model_config = ConfigDict(extra="allow")
    genkey: str | None = Field(None, max_length=128)


async def _genkey(request: Request) -> str | None:
    """The genkey of a POST body, if any (an empty or non-JSON body means none)."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return GenKey.model_validate_json(raw).genkey
    except ValueError:
        raise ApiError(400, "the body is not valid JSON with an optional genkey") from None


def _text_job(state, key: str | None) -> Job | None:
    if key:
        return state.queue.find(key)
    # Several jobs may run at once (batching): the text job running longest.
    return next((job for job in list(state.queue.running) if job.kind == "text"), None)


@router.post("/api/extra/abort")
async def abort(request: Request) -> dict:
    """Stop the running text generation (or the one with this ``genkey``); game turns are
    never touched."""
    state = request.app.state.dungeon
    job = _text_job(state, await _genkey(request))
    if job is not None and job.kind == "text":
        job.cancel.set()
        return {"success": "true", "done": "true"}
    return {"success": "false", "done": "true"}


@router.get("/api/extra/generate/check")
@router.post("/api/extra/generate/check", include_in_schema=False)
async def check(request: Request) -> dict:
    """The text written so far by the running generation (or the one with this genkey)."""
    state = request.app.state.dungeon
    key = await _genkey(request) if request.method == "POST" else None
    job = _text_job(state, key)
    return {"results": [{"text": job.partial if job is not None else ""}]}


class TokenCount(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)


@router.post("/api/extra/tokencount")
async def tokencount(body: TokenCount, request: Request) -> dict:
    """``{"value": N, "ids": [...]}``: the prompt's tokens for this model."""
    ids = token_ids(request.app.state.dungeon.generator, body.prompt)
    return {"value": len(ids), "ids": ids}


@router.get("/api/v1/model")
@router.get("/api/latest/model", include_in_schema=False)
async def model(request: Request) -> dict:
    return {"result": request.app.state.dungeon.model_name}


@router.get("/api/v1/config/max_length")
async def max_length(request: Request) -> dict:
    return {"value": request.app.state.dungeon.opts.sampling.max_new_tokens}


@router.get("/api/v1/config/max_context_length")
@router.get("/api/extra/true_max_context_length")
async def max_context_length(request: Request) -> dict:
    return {"value": request.app.state.dungeon.generator.context_window}


@router.get("/api/v1/info/version")
@router.get("/api/latest/info/version", include_in_schema=False)
async def api_version() -> dict:
    return {"result": KOBOLD_API_VERSION}


@router.get("/api/extra/version")
async def extra_version(request: Request) -> dict:
    """KoboldCpp's self-description (front-ends turn on streaming from it), plus ours."""
    return {
        "result": "KoboldCpp",
        "version": KOBOLDCPP_VERSION,
        "protected": request.app.state.dungeon.settings.api_key is not None,
        "txt2img": False,
        "vision": False,
        "transcribe": False,
        "multiplayer": False,
        "websearch": False,
        "tts": False,
        "embeddings": False,
        "server": "dungeon",
        "dungeon_version": __version__,
    }
