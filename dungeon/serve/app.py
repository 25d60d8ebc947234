"""The ``dungeon serve`` application: one process, one loaded model, many games.

    app = create_app(generator, opts, ServeSettings(saves=Path("saves")))
    uvicorn.run(app, host="127.0.0.1", port=5001)

or from the command line, ``dungeon serve --model fake`` (see docs/serve.md). Three faces share
the model through one fair, bounded queue: the game API (``/v1/games/...``), the KoboldAI API
(``/api/...``) and OpenAI completions (``/v1/completions``); ``GET /`` is a page to play in a
browser. FastAPI because it validates requests against typed models, turns them into an
OpenAPI schema (``/openapi.json``) and rests on Starlette's streaming, which server-sent
events need; uvicorn runs it.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from dungeon import __version__
from dungeon.config import PlayOptions
from dungeon.generator import Generator
from dungeon.session import saves_dir

from . import game_api, kobold, openai_api
from .batching import make_batching
from .queue import ModelQueue
from .security import Guard, install_error_handlers
from .settings import ServeSettings, is_loopback
from .store import GameStore

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServerState:
    """What every request handler reaches through ``request.app.state.dungeon``."""

    generator: Generator
    opts: PlayOptions
    settings: ServeSettings
    queue: ModelQueue
    store: GameStore
    started: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_name(self) -> str:
        return str(getattr(self.generator, "name", self.opts.model))


def create_app(
    generator: Generator, opts: PlayOptions, settings: ServeSettings | None = None
) -> FastAPI:
    """The ASGI app over an already loaded generator."""
    settings = settings or ServeSettings()
    folder = settings.saves if settings.saves is not None else saves_dir()
    # Turns of different games decoded together where the model can; else one at a time.
    batching = make_batching(generator, max_rows=settings.batch_size, cache_mb=settings.kv_cache_mb)
    if batching is not None:
        generator = batching
    # A backend that batches concurrent calls itself (a remote inference server) gets as many
    # at once; any other runs one request at a time.
    together = getattr(generator, "concurrent", False) or batching is not None
    state = ServerState(
        generator,
        opts,
        settings,
        ModelQueue(settings.max_queue, slots=settings.batch_size if together else 1),
        GameStore(generator, opts, Path(folder), settings.max_open_games),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        state.queue.close()
        if batching is not None:
            batching.close()

    app = FastAPI(
        title="dungeon",
        version=__version__,
        summary="A text-adventure engine on a fine-tuned language model, over HTTP.",
        docs_url=None,  # the interactive docs pages load scripts from a CDN; the schema
        redoc_url=None,  # itself is at /openapi.json
        lifespan=lifespan,
    )
    app.state.dungeon = state
    install_error_handlers(app)
    app.include_router(game_api.router)
    app.include_router(openai_api.router)
    app.include_router(kobold.router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/health", include_in_schema=False)
    async def health() -> dict:
        found = {"ok": True, "waiting": state.queue.waiting, "running": len(state.queue.running)}
        if batching is not None:
            found["batching"] = batching.stats()
        return found

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-Api-Key", "Content-Type"],
            max_age=600,
        )
    # Outermost: the body limit and host check run before anything reads the request.
    app.add_middleware(
        Guard,
        max_body=settings.max_body_bytes,
        loopback_only=settings.api_key is None and is_loopback(settings.host),
    )
    return app


def banner(settings: ServeSettings, model: str, port: int) -> str:
    """The start-up message: where the server listens and how to connect."""
    url = settings.url(port)
    lines = [
        f"dungeon serve: {model} on {url}",
        f"  play in a browser:  {url}/",
        f"  game API:           {url}/v1/games   (schema: {url}/openapi.json)",
        f"  KoboldAI API:       {url}/api        (SillyTavern, KoboldAI Lite: use {url})",
        f"  OpenAI completions: {url}/v1",
    ]
    if settings.api_key:
        lines.append("  every API request needs the key: 'Authorization: Bearer KEY'")
    else:
        lines.append("  only this machine can connect (no API key; 127.0.0.1)")
    if settings.cors:
        lines.append(f"  browsers may call it from: {', '.join(settings.cors)}")
    lines.append("  Ctrl-C stops it; every game is saved as it is played.")
    return "\n".join(lines)


def run_server(generator: Generator, opts: PlayOptions, settings: ServeSettings) -> int:
    """Serve until Ctrl-C (the CLI's ``dungeon serve``)."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in settings.host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host.strip("[]"), settings.port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {settings.host}:{settings.port} ({err.strerror or err}); "
            "is another server using the port? Try --port"
        ) from None
    sock.listen(2048)  # connections wait in the backlog until the server takes them
    port = sock.getsockname()[1]
    app = create_app(generator, opts, settings)
    print(banner(settings, app.state.dungeon.model_name, port), file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
