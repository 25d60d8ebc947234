"""dungeon's own game API, version 1: everything ``Game`` does, over HTTP.

    GET  /v1/scenarios                      built-in and user scenarios
    GET  /v1/saves                          saved games, newest first
    POST /v1/games                          new game: {scenario | premise | save, seed, ...}
    GET  /v1/games/{id}                     the whole state (story, settings, turns)
    POST /v1/games/{id}/turns               play a turn: {text, mode, candidates}
    POST /v1/games/{id}/turns/stream        the same as server-sent events
    POST /v1/games/{id}/retry[/stream]      another response for the last turn
    POST /v1/games/{id}/undo | redo | alter | choose
    POST /v1/games/{id}/memory, DELETE /v1/games/{id}/memory/{i}, PUT /v1/games/{id}/author-note
    POST /v1/games/{id}/world, DELETE /v1/games/{id}/world/{i}, PATCH /v1/games/{id}/settings
    POST /v1/games/{id}/state               fix the world's state: {op: add|drop|forget, name}
    POST /v1/games/{id}/save                save a copy under another name
    GET  /v1/games/{id}/export?format=markdown|text

A game's id is its save name. Every change is saved (atomically) before the response returns.
A stream whose client goes away cancels the turn: the story stays as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dungeon import saves, startup
from dungeon.actions import MAX_INPUT_CHARS
from dungeon.cleanup import sanitize
from dungeon.game import MAX_CANDIDATES, NothingToDo
from dungeon.remote import RemoteError
from dungeon.story import Turn, WorldEntry

from .queue import END, Cancelled, Channel, Job, QueueClosed, QueueFull
from .security import ApiError, error_body, require_key
from .store import Entry, busy

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

Mode = Literal["do", "say", "story", "continue"]
MAX_KEYS = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewGame(_Body):
    """Start from one of: a scenario name, a premise, or a save (which the game continues)."""

    scenario: str | None = Field(None, max_length=64)
    premise: str | None = Field(None, max_length=startup.MAX_PREMISE_BYTES)
    save: str | None = Field(None, max_length=200)
    seed: int | None = Field(None, ge=0, lt=2**31)
    title: str | None = Field(None, max_length=200)
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES)
    sampling: dict[str, float | int | bool] | None = None


class TurnBody(_Body):
    text: str = Field("", max_length=MAX_INPUT_CHARS)
    mode: Mode = "do"
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES)


class TextBody(_Body):
    text: str = Field(max_length=MAX_INPUT_CHARS)


class ChooseBody(_Body):
    index: int = Field(ge=0)


class WorldBody(_Body):
    keys: list[str] = Field(default_factory=list, max_length=MAX_KEYS)
    text: str = Field(max_length=MAX_INPUT_CHARS)
    secondary_keys: list[str] = Field(default_factory=list, max_length=MAX_KEYS)
    constant: bool = False


class StateEdit(_Body):
    """The player's fix to the world's state (inventory, people, places, condition)."""

    op: Literal["add", "drop", "forget"]
    name: str = Field(min_length=1, max_length=200)


class SettingsBody(_Body):
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES)
    sampling: dict[str, float | int | bool] | None = None


class SaveBody(_Body):
    name: str = Field(max_length=200)
    overwrite: bool = False


# --- what the API returns -------------------------------------------------------------------


def turn_json(index: int, turn: Turn) -> dict:
    return {
        "index": index,
        "action": turn.action,
        "mode": turn.mode,
        "response": turn.response,
        "chosen": turn.chosen,
        "candidates": [
            {"text": c.text, "flagged": c.flagged, "shown": c.shown} for c in turn.candidates
        ],
        "ready": turn.ready,
    }


def game_json(entry: Entry) -> dict:
    session = entry.session
    game = session.game
    story = game.story
    return {
        "id": entry.id,
        "model": session.model_info.get("name"),
        "title": story.title,
        "premise": story.premise,
        "turns": [turn_json(i, t) for i, t in enumerate(story.turns)],
        "can_undo": bool(story.turns),
        "can_redo": bool(story.undone),
        "busy": entry.turn_running,
        "settings": {"candidates": game.settings.candidates, "sampling": game.sampling.to_dict()},
        "story": saves.story_to_dict(story),
        "messages": session.out.messages,
    }


def _state(request: Request):
    return request.app.state.dungeon


def _entry(request: Request, game_id: str) -> Entry:
    return _state(request).store.get(game_id)


def _change(entry: Entry, fn: Callable[[], object]) -> dict:
    """Run a quick change (no model) unless a turn is running; the session saves it."""
    with entry.lock:
        if entry.turn_running:
            raise busy()
        try:
            fn()
        except NothingToDo as err:
            raise ApiError(409, str(err), "nothing_to_do") from None
        except (ValueError, IndexError) as err:
            raise ApiError(422, str(err)) from None
        except saves.SaveError as err:
            raise ApiError(500, f"the game could not be saved: {err}", "save_failed") from None
    return game_json(entry)


# --- scenarios, saves, games ----------------------------------------------------------------


@router.get("/scenarios")
def list_scenarios() -> dict:
    found, _problems = startup.available_scenarios()
    return {
        "scenarios": [
            {"name": s.name, "title": s.title, "genre": s.genre, "description": s.description}
            for s in sorted(found.values(), key=lambda s: s.name)
        ]
    }


@router.get("/saves")
def list_saves(request: Request) -> dict:
    return {"saves": _state(request).store.list_saves()}


@router.post("/games", status_code=201)
def new_game(body: NewGame, request: Request) -> dict:
    """A new game from a scenario or a premise, or a saved game taken up again."""
    store = _state(request).store
    given = [k for k in ("scenario", "premise", "save") if getattr(body, k) is not None]
    if len(given) != 1:
        raise ApiError(422, "give exactly one of scenario, premise or save")
    sampling = dict(body.sampling or {})
    try:
        store.opts.sampling.updated(sampling)
    except (TypeError, ValueError) as err:
        raise ApiError(422, f"sampling: {err}") from None
    if body.save is not None:
        entry = store.get(body.save)
    else:
        seed = startup.fresh_seed(body.seed)
        if body.scenario is not None:
            found, _ = startup.available_scenarios()
            scenario = found.get(body.scenario)
            if scenario is None:
                raise ApiError(
                    404,
                    f"no scenario named {body.scenario!r}; choose one of: {', '.join(sorted(found))}",
                    "not_found",
                )
            story, base = scenario.start(seed), scenario.name
        else:
            try:
                story = startup.premise_story(body.premise or "", seed)
            except startup.StartError as err:
                raise ApiError(422, str(err)) from None
            base = "story"
        if body.title:
            story.title = " ".join(sanitize(body.title).split())
        try:
            entry = store.create(story, base, sampling)
        except saves.SaveError as err:
            log.error("cannot save a new game: %s", err)
            raise ApiError(500, "the new game could not be saved (see the server log)") from None
    if body.candidates is not None or (body.save is not None and sampling):
        return _change(entry, lambda: _apply_settings(entry, body.candidates, sampling))
    return game_json(entry)


def _apply_settings(entry: Entry, candidates: int | None, sampling: dict | None) -> None:
    game = entry.session.game
    if sampling:
        try:
            game.sampling = game.sampling.updated(sampling)
        except TypeError as err:
            raise ValueError(f"sampling: {err}") from None
    if candidates is not None:
        game.set_candidates(candidates)
    entry.session.autosave()


@router.get("/games/{game_id}")
def get_game(game_id: str, request: Request) -> dict:
    return game_json(_entry(request, game_id))


@router.patch("/games/{game_id}/settings")
def change_settings(game_id: str, body: SettingsBody, request: Request) -> dict:
    entry = _entry(request, game_id)
    return _change(entry, lambda: _apply_settings(entry, body.candidates, body.sampling))


@router.post("/games/{game_id}/save")
def save_game(game_id: str, body: SaveBody, request: Request) -> dict:
    """Save a copy of the game as ``name`` (the game keeps its own id and save)."""
    entry = _entry(request, game_id)
    name = _state(request).store.save_copy(entry, body.name, body.overwrite)
    return {"saved": name, "game": game_json(entry)}


@router.get("/games/{game_id}/export")
def export_game(
    game_id: str, request: Request, format: Literal["markdown", "text"] = "markdown"
) -> PlainTextResponse:
    story = _entry(request, game_id).session.game.story
    if format == "text":
        return PlainTextResponse(saves.export_text(story))
    return PlainTextResponse(saves.export_markdown(story), media_type="text/markdown")


# --- quick changes (no model) ---------------------------------------------------------------


@router.post("/games/{game_id}/undo")
def undo(game_id: str, request: Request) -> dict:
    entry = _entry(request, game_id)
    return _change(entry, entry.session.game.undo)


@router.post("/games/{game_id}/redo")
def redo(game_id: str, request: Request) -> dict:
    entry = _entry(request, game_id)
    return _change(entry, entry.session.game.redo)


@router.post("/games/{game_id}/alter")
def alter(game_id: str, body: TextBody, request: Request) -> dict:
    """Replace the last response with your own text (the old one stays as a candidate)."""
    entry = _entry(request, game_id)
    return _change(entry, lambda: entry.session.game.alter(body.text))


@router.post("/games/{game_id}/choose")
def choose(game_id: str, body: ChooseBody, request: Request) -> dict:
    """Show candidate ``index`` of the last turn (0-based, as listed in the turn)."""
    entry = _entry(request, game_id)
    return _change(entry, lambda: entry.session.game.choose(body.index))


@router.post("/games/{game_id}/memory")
def remember(game_id: str, body: TextBody, request: Request) -> dict:
    entry = _entry(request, game_id)
    return _change(entry, lambda: entry.session.game.remember(body.text))


@router.delete("/games/{game_id}/memory/{index}")
def forget(game_id: str, index: int, request: Request) -> dict:
    entry = _entry(request, game_id)
    return _change(entry, lambda: entry.session.game.forget(index))


@router.put("/games/{game_id}/author-note")
def author_note(game_id: str, body: TextBody, request: Request) -> dict:
    entry = _entry(request, game_id)
    return _change(entry, lambda: entry.session.game.set_author_note(body.text))


@router.post("/games/{game_id}/world")
def add_world(game_id: str, body: WorldBody, request: Request) -> dict:
    entry = _entry(request, game_id)
    if any(len(k) > 100 for k in body.keys + body.secondary_keys):
        raise ApiError(422, "world keys may have at most 100 characters each")

    def add() -> None:
        clean = [sanitize(k) for k in body.keys]
        second = [sanitize(k) for k in body.secondary_keys]
        entry.session.game.add_world_entry(
            WorldEntry(clean, sanitize(body.text).strip(), second, body.constant)
        )

    return _change(entry, add)


@router.post("/games/{game_id}/state")
def edit_state(game_id: str, body: StateEdit, request: Request) -> dict:
    """``add`` or ``drop`` an inventory item, ``forget`` a person, place or condition; the
    state itself is derived from the turns (``story.state`` in the game)."""
    entry = _entry(request, game_id)
    return _change(entry, lambda: entry.session.game.edit_state(body.op, body.name))


@router.delete("/games/{game_id}/world/{index}")
def remove_world(game_id: str, index: int, request: Request) -> dict:
    entry = _entry(request, game_id)
    return _change(entry, lambda: entry.session.game.remove_world_entry(index))


# --- turns (through the model queue) --------------------------------------------------------


def _submit_turn(request: Request, entry: Entry, fn: Callable[[Job], object]) -> Job:
    """Queue a model job for this game; the game refuses other changes until it is over."""
    entry.claim_turn()
    try:
        job = _state(request).queue.submit(f"game:{entry.id}", fn, kind="game")
    except QueueFull as err:
        entry.release_turn()
        raise ApiError(
            503, str(err), "server_busy", {"Retry-After": str(err.retry_after)}
        ) from None
    except QueueClosed as err:
        entry.release_turn()
        raise ApiError(503, str(err), "server_busy") from None
    job.future.add_done_callback(lambda _f: entry.release_turn())
    return job


def _job_error(err: BaseException) -> ApiError:
    if isinstance(err, ApiError):
        return err
    if isinstance(err, NothingToDo):
        return ApiError(409, str(err), "nothing_to_do")
    if isinstance(err, Cancelled):
        return ApiError(409, "the turn was cancelled", "cancelled")
    if isinstance(err, RemoteError):  # the model runs on another server (--model URL)
        return ApiError(502, str(err), "model_server_error")
    if isinstance(err, (ValueError, IndexError)):
        return ApiError(422, str(err))
    if isinstance(err, saves.SaveError):
        return ApiError(500, f"the turn could not be saved: {err}", "save_failed")
    return ApiError(500, "the turn failed (the server log has the details)", "server_error")


def _played(entry: Entry, turn_index: int) -> dict:
    game = entry.session.game
    turn = game.story.turns[turn_index]
    return {
        "turn": turn_json(turn_index, turn),
        "notice": game.last_notice,
        "flagged": turn.candidates[turn.chosen].flagged,
    }


async def _await_job(job: Job) -> object:
    try:
        return await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        job.cancel.set()
        raise
    except Exception as err:
        raise _job_error(err) from None


@router.post("/games/{game_id}/turns")
async def play_turn(game_id: str, body: TurnBody, request: Request) -> dict:
    """Play one turn; returns it once it is committed and saved."""
    entry = _entry(request, game_id)

    def work(_job: Job) -> dict:
        game = entry.session.game
        game.act(body.text, body.mode, candidates=body.candidates)
        return _played(entry, len(game.story.turns) - 1)

    result = await _await_job(_submit_turn(request, entry, work))
    return {**result, "game": game_json(entry)}


@router.post("/games/{game_id}/retry")
async def retry(game_id: str, request: Request) -> dict:
    """Another response for the last turn (a waiting candidate at once, else a new one)."""
    entry = _entry(request, game_id)
    _need_turn(entry)

    def work(_job: Job) -> dict:
        game = entry.session.game
        game.retry()
        return _played(entry, len(game.story.turns) - 1)

    result = await _await_job(_submit_turn(request, entry, work))
    return {**result, "game": game_json(entry)}


def _need_turn(entry: Entry) -> None:
    if not entry.session.game.story.turns:
        raise ApiError(409, "nothing to retry: the story has no turns yet", "nothing_to_do")


@router.post("/games/{game_id}/turns/stream")
async def play_turn_stream(game_id: str, body: TurnBody, request: Request) -> StreamingResponse:
    """Play one turn as server-sent events: ``event: piece`` (``{"text"}``, cleaned text as it
    is written), then ``event: turn`` (the committed turn, as /turns returns it) or
    ``event: error``. Closing the connection before ``turn`` cancels the turn."""
    entry = _entry(request, game_id)
    return _stream(
        request,
        entry,
        lambda: entry.session.game.stream(body.text, body.mode, candidates=body.candidates),
    )


@router.post("/games/{game_id}/retry/stream")
async def retry_stream(game_id: str, request: Request) -> StreamingResponse:
    entry = _entry(request, game_id)
    _need_turn(entry)
    return _stream(request, entry, lambda: entry.session.game.retry_stream())


def _stream(request: Request, entry: Entry, start: Callable[[], Iterator[str]]):
    channel = Channel()

    def work(job: Job) -> dict:
        pieces = start()
        try:
            for piece in pieces:
                if job.cancelled:  # the client went away: close before the turn commits
                    raise Cancelled("the client went away")
                channel.put(piece)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        return _played(entry, len(entry.session.game.story.turns) - 1)

    job = _submit_turn(request, entry, work)
    channel.end_with(job)
    path = request.url.path

    async def events():
        try:
            while (piece := await channel.get()) is not END:
                yield _event("piece", {"text": piece})
            try:
                result = job.future.result()
            except Exception as err:
                api = _job_error(err)
                yield _event("error", error_body(path, api.status, api.message, api.kind))
                return
            yield _event("turn", {**result, "game": game_json(entry)})
        finally:
            job.cancel.set()  # no-op once the turn is committed

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
