"""ServeSettings: how ``dungeon serve`` listens and what it lets in. Built by the CLI."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
"""KoboldCpp's port, so front-ends find dungeon where they look first."""
MIN_API_KEY_CHARS = 8


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """The server's own settings (the model's come from PlayOptions). Validated on creation."""

    host: str = DEFAULT_HOST
    """Address to bind. Anything but loopback needs ``api_key``."""
    port: int = DEFAULT_PORT
    """TCP port (0 picks a free one)."""
    api_key: str | None = None
    """When set, every API request must carry it (``Authorization: Bearer KEY`` or
    ``X-Api-Key: KEY``)."""
    saves: Path | None = None
    """Folder of the games' saves; None: the user data folder, as ``dungeon play`` uses."""
    cors: tuple[str, ...] = ()
    """Origins whose web pages may call the API from a browser ("*" for any); none: CORS off."""
    max_queue: int = 16
    """Requests that may wait for the model; more are answered 503 with Retry-After."""
    max_body_bytes: int = 1_000_000
    """Largest request body (413 beyond it)."""
    max_open_games: int = 64
    """Games kept in memory; older idle ones are closed (they are saved) and reopen on use."""
    batch_size: int = 8
    """Turns decoded together in one batch (where the model can: see dungeon.serve.batching);
    1 decodes one turn at a time."""
    kv_cache_mb: float = 256.0
    """Memory for the games' key/value caches kept between turns (least recently used out)."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be between 0 and 65535, got {self.port}")
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_CHARS:
            problems.append(f"the API key must have at least {MIN_API_KEY_CHARS} characters")
        if self.api_key is None and not is_loopback(self.host):
            problems.append(
                f"binding {self.host} lets other machines reach the server: give an API key "
                "with --api-key KEY (or the DUNGEON_API_KEY environment variable), or bind "
                "127.0.0.1"
            )
        if self.max_queue < 1:
            problems.append(f"max_queue must be 1 or more, got {self.max_queue}")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if not 1 <= self.batch_size <= 64:
            problems.append(f"batch_size must be between 1 and 64, got {self.batch_size}")
        if self.kv_cache_mb < 0:
            problems.append(f"kv_cache_mb must be 0 or more, got {self.kv_cache_mb}")
        if self.max_open_games < 1:
            problems.append(f"max_open_games must be 1 or more, got {self.max_open_games}")
        for origin in self.cors:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                problems.append(f"a CORS origin looks like https://example.com, got {origin!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def url(self, port: int | None = None) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port if port is None else port}"
