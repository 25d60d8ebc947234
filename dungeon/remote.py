"""RemoteGenerator: the Generator protocol over an OpenAI-compatible completions server.

The story stays in dungeon; the model runs on a server built to scale it (vLLM, TGI,
llama.cpp's server, KoboldCpp, or another ``dungeon serve``)::

    gen = load_remote("http://gpu-box:8000/v1", tokenizer="smollm2-135m")
    for piece in gen.stream(prompt, seed=7):    # POST /v1/completions, "stream": true
        print(piece, end="")

or ``dungeon play --model http://gpu-box:8000/v1 --tokenizer smollm2-135m``. The context is
budgeted in tokens, so counting must match the server's model: a local tokenizer the user names
(a model folder, ``smollm2-135m``, ``gpt2``, a hub id), else the server's own tokenize endpoint
where it has one (KoboldCpp's and dungeon serve's ``/api/extra/tokencount``, llama.cpp's and
vLLM's ``/tokenize``), else a clear error (``tokenizer="estimate"`` counts 4 characters a token
instead, and says so).

Requests time out, and a busy (429/502/503/504) or unreachable server is retried a bounded
number of times with exponential backoff (a 503's Retry-After is honoured up to
``max_retry_wait_s``). Retries happen only before the first piece of text arrives: a stream
cut in the middle raises RemoteError rather than repeat text the player has seen.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from dungeon.errors import ModelNotFoundError
from dungeon.format import STOP_STRINGS
from dungeon.generator import PromptHoldback, SamplingSettings

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 502, 503, 504})
"""Answers that mean "busy or restarting, try again"; every other error is final."""
ESTIMATE = "estimate"
"""``tokenizer=ESTIMATE``: count 4 characters a token (for servers with no tokenize endpoint)."""
_COUNT_CACHE_SIZE = 4096
_MAX_STOPS = 32


class RemoteError(ModelNotFoundError):
    """The model server could not be used; the message is one line that says what to do.
    (A ModelNotFoundError, so front ends that report a missing model report this the same way.)"""


def is_url(model: object) -> bool:
    """Whether a model name is a server's address (``http://...`` or ``https://...``)."""
    return isinstance(model, str) and model.strip().lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class RemoteSettings:
    """How RemoteGenerator talks to the server. Validated on construction."""

    url: str
    """The OpenAI-compatible base, e.g. ``http://host:8000/v1`` (``/v1`` is added if absent)."""
    model: str | None = None
    """The model name to send; None: the first model the server lists at ``/v1/models``."""
    api_key: str | None = None
    """Sent as ``Authorization: Bearer KEY`` (vLLM's ``--api-key``, dungeon serve's)."""
    timeout_s: float = 120.0
    """Longest wait for the server's next bytes (a whole response may take longer)."""
    connect_timeout_s: float = 5.0
    retries: int = 4
    """Further attempts after the first, on 429/502/503/504 and connection errors."""
    backoff_s: float = 0.5
    """First wait between attempts; doubled each time (with jitter)."""
    max_retry_wait_s: float = 30.0
    """Longest wait before one retry, whatever the server's Retry-After says."""
    context_window: int | None = None
    """The model's window in tokens; None: what the server says (vLLM's ``max_model_len``,
    KoboldCpp's true_max_context_length), else 2048."""
    extensions: bool = True
    """Send vLLM's sampling extensions (``top_k``, ``repetition_penalty``, ``min_tokens``),
    which vLLM, llama.cpp, TGI's router and dungeon serve read; off for strict servers."""

    def __post_init__(self) -> None:
        problems = []
        if not is_url(self.url):
            problems.append(f"the server address must start with http:// or https://: {self.url!r}")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            problems.append("timeouts must be positive")
        if not 0 <= self.retries <= 20:
            problems.append(f"retries must be between 0 and 20, got {self.retries}")
        if self.backoff_s < 0 or self.max_retry_wait_s < 0:
            problems.append("backoff_s and max_retry_wait_s must be 0 or more")
        if self.context_window is not None and self.context_window < 32:
            problems.append(f"context_window must be at least 32, got {self.context_window}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def base(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        url = self.url.strip().rstrip("/")
        return url if url.endswith("/v1") else f"{url}/v1"

    @property
    def root(self) -> str:
        """The server's root (where tokenize and KoboldAI endpoints live)."""
        return self.base.removesuffix("/v1")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _server_message(response: httpx.Response) -> str:
    """The error message in a server's answer (OpenAI, FastAPI and KoboldCpp shapes)."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text or response.reason_phrase)
    if isinstance(body, dict):
        for key in ("error", "detail"):
            inner = body.get(key)
            if isinstance(inner, dict):
                return _one_line(inner.get("message") or inner.get("msg") or json.dumps(inner))
            if isinstance(inner, str):
                return _one_line(inner)
        if "message" in body:
            return _one_line(body["message"])
    return _one_line(json.dumps(body))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def load_tokenizer(name: str):
    """A local tokenizer by name: a folder, ``smollm2-135m`` (the built-in model's), ``gpt2``
    (the GPT-2 BPE that ``make test`` fetches) or a hub id (where the hub is reachable)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from dungeon.builtin_model import BUILTIN_MODEL

    folder = Path(name).expanduser()
    try:
        if folder.is_dir():
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        if name.strip().lower() in ("gpt2", "gpt-2"):
            from dungeon.tiny import load_gpt2_tokenizer

            return load_gpt2_tokenizer()
        if name.strip().lower() == BUILTIN_MODEL:
            from dungeon.models import resolve_base

            return AutoTokenizer.from_pretrained(resolve_base(name), trust_remote_code=False)
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"cannot load the tokenizer {name!r} ({_one_line(err, 160)}); name a folder with "
            f"tokenizer.json, {BUILTIN_MODEL!r} or 'gpt2'"
        ) from None


class RemoteGenerator:
    """A Generator whose model runs on an OpenAI-compatible completions server."""

    def __init__(
        self,
        remote: RemoteSettings,
        *,
        tokenizer: Any = None,
        settings: SamplingSettings | None = None,
        client: httpx.Client | None = None,
    ):
        """``tokenizer``: an object with ``encode(text) -> ids`` (a transformers tokenizer), a
        name for ``load_tokenizer``, ``"estimate"``, or None (the server's tokenize endpoint).
        Asks the server for its models at once: a server that cannot be reached raises
        RemoteError here, not at the first turn."""
        self.remote = remote
        self.settings = settings or SamplingSettings()
        headers = {"Authorization": f"Bearer {remote.api_key}"} if remote.api_key else {}
        timeout = httpx.Timeout(remote.timeout_s, connect=remote.connect_timeout_s)
        self.client = client or httpx.Client(headers=headers, timeout=timeout)
        self.concurrent = True
        """Safe to call from several threads at once (the server batches them itself)."""
        self.retries_used = 0
        """Retries made so far (busy or unreachable server), for tests and logs."""
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._count_path: str | None = None

        listed = self._models()
        model = remote.model or (listed[0].get("id") if listed else None)
        if not model:
            raise RemoteError(
                f"{remote.base}/models lists no model; name one with RemoteSettings(model=...)"
            )
        self.model = str(model)
        host = urlsplit(remote.base).netloc
        self.name = f"{self.model}@{host}"
        self.context_window = remote.context_window or self._window(listed)

        self.tokenizer = None
        self._estimate = False
        if isinstance(tokenizer, str):
            if tokenizer == ESTIMATE:
                self._estimate = True
                log.warning(
                    "counting tokens as 4 characters each for %s: the context budget is only "
                    "an estimate (name a tokenizer to count exactly)",
                    self.name,
                )
            else:
                self.tokenizer = load_tokenizer(tokenizer)
        elif tokenizer is not None:
            self.tokenizer = tokenizer
        if self.tokenizer is None and not self._estimate:
            self._count_path = self._find_count_endpoint()

    # --- talking to the server ------------------------------------------------------------
    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        asked = _retry_after(response) if response is not None else None
        backoff = self.remote.backoff_s * (2**attempt) * (0.75 + 0.5 * random.random())
        return min(self.remote.max_retry_wait_s, asked if asked is not None else backoff)

    def _request(self, method: str, url: str, **kw) -> httpx.Response:
        """One request with bounded retries; the response is open (the caller closes it).
        Raises RemoteError with one line when the server cannot answer."""
        last = ""
        attempts = self.remote.retries + 1
        for attempt in range(attempts):
            response = None
            try:
                request = self.client.build_request(method, url, **kw)
                response = self.client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as err:
                last = f"cannot reach the model server at {url} ({_one_line(err, 120) or type(err).__name__})"
            except httpx.TimeoutException:
                raise RemoteError(
                    f"the model server at {url} did not answer within {self.remote.timeout_s:g} s"
                ) from None
            except httpx.HTTPError as err:
                raise RemoteError(f"request to {url} failed: {_one_line(err, 160)}") from None
            else:
                if response.status_code < 400:
                    return response
                response.read()
                message = _server_message(response)
                if response.status_code not in RETRY_STATUS:
                    response.close()
                    raise RemoteError(
                        f"the model server answered {response.status_code} to {url}: {message}"
                    )
                last = f"the model server is busy ({response.status_code} from {url}: {message})"
                response.close()
            if attempt + 1 < attempts:
                wait = self._wait(attempt, response)
                log.info("%s; retrying in %.1f s", last, wait)
                self.retries_used += 1
                time.sleep(wait)
        raise RemoteError(f"{last}; gave up after {attempts} attempts")

    def _json(self, method: str, url: str, **kw) -> Any:
        response = self._request(method, url, **kw)
        try:
            response.read()
            return response.json()
        except ValueError:
            raise RemoteError(f"{url} answered with something that is not JSON") from None
        finally:
            response.close()

    def _models(self) -> list[dict]:
        data = self._json("GET", f"{self.remote.base}/models")
        listed = data.get("data") if isinstance(data, dict) else None
        return [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []

    def _window(self, listed: list[dict]) -> int:
        for m in listed:
            if m.get("id") == self.model:
                for key in ("max_model_len", "context_length", "max_context_length"):
                    value = m.get(key)
                    if isinstance(value, int) and value > 0:
                        return value
        probe = self._try_json("GET", f"{self.remote.root}/api/extra/true_max_context_length")
        if isinstance(probe, dict) and isinstance(probe.get("value"), int) and probe["value"] > 0:
            return probe["value"]
        log.warning("%s does not say its context window; assuming 2048 tokens", self.name)
        return 2048

    def _try_json(self, method: str, url: str, **kw) -> Any:
        """One attempt, no retries; None on any failure (for probing optional endpoints)."""
        try:
            response = self.client.request(method, url, **kw)
        except httpx.HTTPError:
            return None
        if response.status_code >= 400:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    # --- tokens ---------------------------------------------------------------------------
    def _find_count_endpoint(self) -> str:
        for path in ("/api/extra/tokencount", "/tokenize"):
            if self._server_count("probe", path, probe=True) is not None:
                return path
        raise RemoteError(
            f"the model server at {self.remote.root} has no tokenize endpoint; name a local "
            "tokenizer for its model with --tokenizer PATH (a model folder, or smollm2-135m "
            "for the built-in model), or --tokenizer estimate to count 4 characters a token"
        )

    def _server_count(self, text: str, path: str, *, probe: bool = False) -> int | None:
        """The server's count for ``text``; None when its answer has none. A probe makes one
        attempt and answers None on any failure; a count retries and raises RemoteError."""
        url = self.remote.root + path
        if path == "/tokenize":  # llama.cpp reads "content", vLLM "prompt" (and "model")
            body = {"content": text, "prompt": text, "model": self.model}
        else:
            body = {"prompt": text}
        if probe:
            data = self._try_json("POST", url, json=body)
        else:
            data = self._json("POST", url, json=body)
        if not isinstance(data, dict):
            return None
        for key in ("value", "count"):
            if isinstance(data.get(key), int):
                return data[key]
        tokens = data.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None

    def encode(self, text: str) -> list[int]:
        """Token ids from the local tokenizer (only when one was named)."""
        if self.tokenizer is None:
            raise RemoteError("no local tokenizer: token ids need --tokenizer")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            n = self._counts.get(text)
            if n is not None:
                self._counts.move_to_end(text)
                return n
        if self.tokenizer is not None:
            with self._lock:  # a tokenizer is not made to be shared by threads
                n = len(self.encode(text))
        elif self._estimate:
            n = (len(text) + 3) // 4
        else:
            assert self._count_path is not None
            counted = self._server_count(text, self._count_path)
            if counted is None:
                raise RemoteError(
                    f"the model server's {self._count_path} answered without a token count"
                )
            n = counted
        with self._lock:
            self._counts[text] = n
            if len(self._counts) > _COUNT_CACHE_SIZE:
                self._counts.popitem(last=False)
        return n

    # --- generation -----------------------------------------------------------------------
    def _body(self, prompt: str, seed: int, settings: SamplingSettings, stop: Sequence[str]):
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": int(seed),
            "stream": True,
            "n": 1,
        }
        stops = [s for s in stop if s][:_MAX_STOPS]
        if stops:
            body["stop"] = stops
        if self.remote.extensions:
            if settings.top_k > 0:
                body["top_k"] = settings.top_k
            if settings.repetition_penalty != 1.0:
                body["repetition_penalty"] = settings.repetition_penalty
            if settings.min_new_tokens > 0:
                body["min_tokens"] = settings.min_new_tokens
        return body

    def stream(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[str]:
        """Yield the server's response piece by piece; stop strings never come out (the
        server is asked to stop at them, and a stop split across the prompt's end or across
        pieces is caught here too). Closing the iterator closes the connection."""
        settings = settings or self.settings
        url = f"{self.remote.base}/completions"
        hold = PromptHoldback(stop, prompt)
        response = self._request(
            "POST",
            url,
            json=self._body(prompt, seed, settings, stop),
            headers={"Accept": "text/event-stream"},
        )
        try:
            for text in self._pieces(response, url):
                out = hold.push(text)
                if out:
                    yield out
                if hold.stopped:
                    return
            tail = hold.flush()
            if tail:
                yield tail
        finally:
            response.close()

    def _pieces(self, response: httpx.Response, url: str) -> Iterator[str]:
        """The text of each server-sent event (a plain JSON answer is taken whole)."""
        kind = response.headers.get("content-type", "")
        try:
            if "text/event-stream" not in kind:  # a server that ignores "stream"
                response.read()
                yield from _choice_texts(response.json(), url)
                return
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise RemoteError(
                        f"{url} sent an event that is not JSON: {_one_line(data, 80)}"
                    ) from None
                yield from _choice_texts(chunk, url)
        except (httpx.TransportError, httpx.StreamError) as err:
            raise RemoteError(
                f"the model server at {url} closed the stream mid-response ({_one_line(err, 120) or type(err).__name__})"
            ) from None
        except ValueError:
            raise RemoteError(f"{url} answered with something that is not JSON") from None

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> str:
        return "".join(self.stream(prompt, seed=seed, settings=settings, stop=stop))

    def close(self) -> None:
        self.client.close()


def _choice_texts(chunk: Any, url: str) -> Iterator[str]:
    if isinstance(chunk, dict) and "error" in chunk:
        err = chunk["error"]
        message = err.get("message") if isinstance(err, dict) else err
        raise RemoteError(f"the model server reported an error: {_one_line(message)}")
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        raise RemoteError(f"{url} answered without choices; is it an OpenAI completions endpoint?")
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            text = choice.get("text")
            if isinstance(text, str) and text:
                yield text


_URL_SAFE = re.compile(r"//[^/@]*@")


def load_remote(
    url: str,
    *,
    tokenizer: Any = None,
    settings: SamplingSettings | None = None,
    api_key: str | None = None,
    model: str | None = None,
    **remote: Any,
) -> RemoteGenerator:
    """A RemoteGenerator for ``url`` (``http://host:port/v1``; ``...#NAME`` picks the served
    model NAME, e.g. a vLLM LoRA module); see RemoteSettings for the rest. Raises RemoteError
    (the server) or ModelNotFoundError (the tokenizer) with one line."""
    url, _, fragment = url.partition("#")
    model = model or fragment or None
    try:
        config = RemoteSettings(url=url, api_key=api_key, model=model, **remote)
    except ValueError as err:
        raise RemoteError(str(err)) from None
    log.info("using the model server at %s", _URL_SAFE.sub("//", config.base))
    return RemoteGenerator(config, tokenizer=tokenizer, settings=settings)
