"""The OpenAI-compatible completions API: ``POST /v1/completions`` and ``GET /v1/models``.

The shapes of OpenAI's legacy completions endpoint as vLLM and llama.cpp's server serve it,
so any OpenAI client (and dungeon's own remote generator) can use dungeon's model. Streaming
sends ``data: {chunk}`` lines and ends with ``data: [DONE]``. docs/serve.md lists the fields
honoured and ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dungeon.generator import SamplingSettings

from .kobold import MAX_PROMPT_CHARS, MAX_STOPS
from .queue import END, Channel, Job, QueueClosed, QueueFull
from .security import ApiError, require_key
from .textgen import Completion, TextRequest, fit_lengths, run_completion, seeds_for

MAX_CHOICES = 8
"""n times the number of prompts, at most."""

router = APIRouter(dependencies=[Depends(require_key)])


class CompletionRequest(BaseModel):
    """What dungeon honours of OpenAI's completions request (plus vLLM's top_k,
    repetition_penalty and min_tokens); other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, ge=0, le=1)
    top_k: int = -1
    repetition_penalty: float = 1.0
    min_tokens: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    echo: bool = False


def _prompts(body: CompletionRequest) -> list[str]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise ApiError(422, "prompt: give a string or a list of strings")
    if len(prompts) * body.n > MAX_CHOICES:
        raise ApiError(422, f"n times the number of prompts may be at most {MAX_CHOICES}")
    if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise ApiError(413, f"a prompt may have at most {MAX_PROMPT_CHARS:,} characters")
    return prompts


def _requests(state, body: CompletionRequest) -> list[TextRequest]:
    # max_tokens null: the server's default response length (vLLM would fill the context).
    ctx, new = fit_lengths(
        state.generator, None, body.max_tokens or state.opts.sampling.max_new_tokens
    )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS or any(len(s) > 200 for s in stops):
        raise ApiError(422, f"stop: at most {MAX_STOPS} strings of at most 200 characters")
    try:
        settings = SamplingSettings(
            temperature=min(body.temperature, 5.0),
            top_k=max(body.top_k, 0),
            top_p=body.top_p if body.top_p > 0 else 1.0,
            repetition_penalty=min(max(body.repetition_penalty, 1.0), 3.0),
            max_new_tokens=new,
            min_new_tokens=min(body.min_tokens, new),
        )
    except ValueError as err:
        raise ApiError(422, str(err)) from None
    seeds = seeds_for(body.seed, body.n)
    return [
        TextRequest(p, settings, tuple(s for s in stops if s), seeds, ctx) for p in _prompts(body)
    ]


def _submit(state, request: Request, fn) -> Job:
    owner = "text:" + (request.client.host if request.client else "?")
    try:
        return state.queue.submit(owner, fn, kind="text")
    except QueueFull as err:
        raise ApiError(
            503, str(err), "server_busy", {"Retry-After": str(err.retry_after)}
        ) from None
    except QueueClosed as err:
        raise ApiError(503, str(err), "server_busy") from None


def _usage(results: list[list[Completion]]) -> dict:
    prompt = sum(r[0].prompt_tokens for r in results if r)
    completion = sum(c.completion_tokens for r in results for c in r)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    """Text after each prompt, ``n`` per prompt; ``stream: true`` for server-sent events."""
    state = request.app.state.dungeon
    texts = _requests(state, body)
    cid = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    name = state.model_name
    n = body.n

    def head(choices: list) -> dict:
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": choices,
        }

    if not body.stream:

        def work(job: Job):
            return [run_completion(state.generator, t, job) for t in texts]

        job = _submit(state, request, work)
        try:
            results = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        choices = []
        for p, (t, done) in enumerate(zip(texts, results)):
            for row, c in enumerate(done):
                text = (t.prompt + c.text) if body.echo else c.text
                choices.append(_choice(p * n + row, text, c.finish_reason))
        return {**head(choices), "usage": _usage(results)}

    channel = Channel()

    def work_stream(job: Job):
        results = []
        for p, t in enumerate(texts):
            if body.echo:
                for row in range(n):
                    channel.put((p * n + row, t.prompt))
            emit = lambda row, piece, p=p: channel.put((p * n + row, piece))  # noqa: E731
            results.append(run_completion(state.generator, t, job, emit))
        return results

    job = _submit(state, request, work_stream)
    channel.end_with(job)
    include_usage = bool((body.stream_options or {}).get("include_usage"))

    async def events():
        try:
            while (item := await channel.get()) is not END:
                index, piece = item
                yield _data(head([_choice(index, piece, None)]))
            try:
                results = job.future.result()
            except Exception as err:
                yield _data(
                    {"error": {"message": str(err) or "generation failed", "type": "server_error"}}
                )
                return
            final = [
                _choice(p * n + row, "", c.finish_reason)
                for p, done in enumerate(results)
                for row, c in enumerate(done)
            ]
            yield _data(head(final))
            if include_usage:
                yield _data({**head([]), "usage": _usage(results)})
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _choice(index: int, text: str, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@router.get("/v1/models")
async def models(request: Request) -> dict:
    state = request.app.state.dungeon
    return {
        "object": "list",
        "data": [
            {
                "id": state.model_name,
                "object": "model",
                "created": state.started,
                "owned_by": "dungeon",
                "max_model_len": state.generator.context_window,
            }
        ],
    }
