"""A real dungeon server on a loopback port, in a thread, for the serve tests.

with running_server(FakeGenerator(), saves=tmp_path) as server:
    httpx.get(server.url + "/v1/scenarios")
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import uvicorn

from dungeon.config import PlayOptions
from dungeon.format import STOP_STRINGS
from dungeon.generator import FakeGenerator, Generator
from dungeon.serve.app import create_app
from dungeon.serve.settings import ServeSettings


@dataclass
class Server:
    url: str
    app: object
    saves: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 30, **kw})


@contextlib.contextmanager
def running_server(
    generator: Generator,
    *,
    saves: Path,
    opts: PlayOptions | None = None,
    **settings,
) -> Iterator[Server]:
    """Serve ``generator`` on 127.0.0.1 at a free port until the block ends."""
    opts = opts or PlayOptions(model="fake")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    serve = replace(ServeSettings(saves=saves), **settings)
    app = create_app(generator, opts, serve)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", app, saves)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from the lines of a server-sent-event stream."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        yield event, "\n".join(data)


class SlowGenerator(FakeGenerator):
    """A FakeGenerator that takes ``delay`` seconds per piece (to catch a turn mid-stream)."""

    def __init__(self, *args, delay: float = 0.05, **kw):
        super().__init__(*args, **kw)
        self.delay = delay

    def stream(self, prompt, *, seed, settings=None, stop=STOP_STRINGS):
        for piece in super().stream(prompt, seed=seed, settings=settings, stop=stop):
            time.sleep(self.delay)
            yield piece


def wait_until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
