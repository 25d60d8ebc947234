"""The model queue: worker threads run jobs on the model, owners in turn.

The model is one object (one key/value cache, one set of weights). With a generator that
decodes one prompt at a time, one job runs at a time (``slots=1``). With a BatchingGenerator
(dungeon.serve.batching), up to ``slots`` jobs from different owners run at once, each on its
own worker thread, and their decode steps are batched together. Every request that needs the
model (a game's turn, a KoboldAI or OpenAI completion) becomes a ``Job`` in this queue::

    job = queue.submit("game:fantasy-1", lambda job: game.act("look"))   # QueueFull when full
    turn = await asyncio.wrap_future(job.future)

Fairness: jobs wait in one line per owner (a game, or a text-API client), and the workers take
the owners in turn (round robin; an owner runs one job at a time), so one client sending many
requests cannot starve the others.
The wait is bounded: beyond ``max_waiting`` jobs ``submit`` raises ``QueueFull`` with a
Retry-After estimate (the server answers 503), never an unbounded pile-up.

Cancelling: a job's ``cancel`` event is checked by the job itself between pieces of text (a
stream whose client went away); a job cancelled before it starts is skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

END = object()
"""What a Channel delivers after the job's last piece."""


class QueueFull(Exception):
    """Too many jobs are waiting for the model; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, waiting: int):
        super().__init__(
            f"the server is busy: {waiting} requests are waiting for the model; "
            f"try again in {retry_after} s"
        )
        self.retry_after = retry_after
        self.waiting = waiting


class Cancelled(Exception):
    """The job was cancelled (its client went away, or asked to abort) before it finished."""


class QueueClosed(Exception):
    """The server is shutting down."""


@dataclass(eq=False)
class Job:
    """One piece of work for the model."""

    owner: str
    """Who the job is for (a game id, or a text-API client): the unit of fairness."""
    fn: Callable[[Job], Any]
    """Runs on the worker thread; checks ``cancelled`` between pieces of work."""
    kind: str = "game"
    """"game" or "text" (the KoboldAI abort endpoint only touches text jobs)."""
    key: str | None = None
    """A client's own name for the job (KoboldAI's genkey)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    partial: str = ""
    """Text written so far (KoboldAI's generate/check reads it)."""

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()


class ModelQueue:
    """A bounded, fair queue in front of one model, with one worker thread."""

    def __init__(self, max_waiting: int = 16, *, first_guess_s: float = 5.0, slots: int = 1):
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be 1 or more, got {max_waiting}")
        if slots < 1:
            raise ValueError(f"slots must be 1 or more, got {slots}")
        self.max_waiting = max_waiting
        self.slots = slots
        """Jobs that may run at once (1 unless the generator batches concurrent calls)."""
        self._cond = threading.Condition()
        self._lines: OrderedDict[str, deque[Job]] = OrderedDict()
        self._waiting = 0
        self._closed = False
        self.running: list[Job] = []
        self.done = 0
        self._mean_s = first_guess_s
        """Moving average of a job's run time, for Retry-After."""
        self._threads = [
            threading.Thread(target=self._work, name=f"dungeon-model-{i}", daemon=True)
            for i in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def current(self) -> Job | None:
        """The job running longest (the only one when ``slots`` is 1), or None."""
        with self._cond:
            return self.running[0] if self.running else None

    # --- the request side -----------------------------------------------------------------
    def submit(
        self, owner: str, fn: Callable[[Job], Any], *, kind: str = "game", key: str | None = None
    ) -> Job:
        """Queue ``fn`` for the model; raises QueueFull when ``max_waiting`` jobs wait already."""
        job = Job(owner, fn, kind, key)
        with self._cond:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            if self._waiting >= self.max_waiting:
                raise QueueFull(self._retry_after(), self._waiting)
            self._lines.setdefault(owner, deque()).append(job)
            self._waiting += 1
            self._cond.notify()
        return job

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._mean_s * (self._waiting + 1) / self.slots))

    @property
    def waiting(self) -> int:
        with self._cond:
            return self._waiting

    def find(self, key: str) -> Job | None:
        """The running or waiting job with this client key."""
        with self._cond:
            jobs = list(self.running)
            jobs += [j for line in self._lines.values() for j in line]
        return next((j for j in jobs if j.key == key), None)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel waiting jobs, ask the running one to stop, and end the worker."""
        with self._cond:
            self._closed = True
            dropped = [j for line in self._lines.values() for j in line]
            self._lines.clear()
            self._waiting = 0
            for job in self.running:
                job.cancel.set()
            self._cond.notify_all()
        for job in dropped:
            job.cancel.set()
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(QueueClosed("the server is shutting down"))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- the worker -----------------------------------------------------------------------
    def _ready_owner(self) -> str | None:
        """The first owner in line with no job running (round robin)."""
        busy = {j.owner for j in self.running}
        return next((owner for owner in self._lines if owner not in busy), None)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._closed and (owner := self._ready_owner()) is None:
                self._cond.wait()
            if self._closed:
                return None
            line = self._lines.pop(owner)
            job = line.popleft()
            if line:  # the owner's next job waits behind every other owner's
                self._lines[owner] = line
            self._waiting -= 1
            self.running.append(job)
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                if not job.future.set_running_or_notify_cancel():
                    continue  # the caller gave up while the job waited
                if job.cancelled:
                    job.future.set_exception(Cancelled("cancelled before it started"))
                    continue
                started = time.perf_counter()
                try:
                    result = job.fn(job)
                except BaseException as err:  # delivered to the request, never kills the worker
                    if not isinstance(err, (Cancelled, ValueError, LookupError)):
                        log.exception("model job for %s failed", job.owner)
                    job.future.set_exception(err)
                else:
                    job.future.set_result(result)
                took = time.perf_counter() - started
                self._mean_s = 0.8 * self._mean_s + 0.2 * took
            finally:
                with self._cond:
                    self.running.remove(job)
                    self.done += 1
                    self._cond.notify_all()  # the owner's next job may run now


class Channel:
    """Pieces of text from the worker thread to the event loop of one streaming request."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self.items: asyncio.Queue = asyncio.Queue()

    def put(self, item: Any) -> None:
        """Thread-safe; a loop already closed (the server stopping) drops the item."""
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:
            pass

    def end_with(self, job: Job) -> None:
        """Deliver END once ``job`` is over, however it ends (even skipped in the queue)."""
        job.future.add_done_callback(lambda _f: self.put(END))

    async def get(self) -> Any:
        return await self.items.get()
