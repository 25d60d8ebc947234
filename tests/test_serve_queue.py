"""The model queue: one job at a time, owners in turn, bounded, cancellable."""

from __future__ import annotations

import threading

import pytest

from dungeon.serve.queue import Cancelled, ModelQueue, QueueClosed, QueueFull


@pytest.fixture
def queue():
    q = ModelQueue(max_waiting=8)
    yield q
    q.close()


def _gate(q: ModelQueue):
    """Occupy the worker until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold(_job):
        started.set()
        release.wait(10)
        return "held"

    job = q.submit("holder", hold)
    assert started.wait(5)
    return release, job


def test_owners_take_turns_so_one_busy_client_cannot_starve_another(queue):
    release, _ = _gate(queue)
    order: list[str] = []
    jobs = [queue.submit("a", lambda _j, i=i: order.append(f"a{i}")) for i in range(3)]
    jobs.append(queue.submit("b", lambda _j: order.append("b0")))
    jobs.append(queue.submit("c", lambda _j: order.append("c0")))
    release.set()
    for job in jobs:
        job.future.result(5)
    assert order == ["a0", "b0", "c0", "a1", "a2"]


def test_only_one_job_runs_at_a_time(queue):
    running, most = [0], [0]
    lock = threading.Lock()

    def work(_job):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.01)
        with lock:
            running[0] -= 1

    jobs = [queue.submit(f"owner{i % 3}", work) for i in range(8)]
    for job in jobs:
        job.future.result(5)
    assert most[0] == 1


def test_a_full_queue_refuses_with_a_retry_after_instead_of_piling_up():
    q = ModelQueue(max_waiting=2)
    try:
        release, _ = _gate(q)
        q.submit("a", lambda _j: None)
        q.submit("b", lambda _j: None)
        with pytest.raises(QueueFull) as info:
            q.submit("c", lambda _j: None)
        assert info.value.retry_after >= 1
        assert "busy" in str(info.value)
        release.set()
    finally:
        q.close()


def test_a_job_cancelled_while_waiting_never_runs(queue):
    release, _ = _gate(queue)
    ran = []
    job = queue.submit("a", lambda _j: ran.append(1))
    job.cancel.set()
    release.set()
    with pytest.raises(Cancelled):
        job.future.result(5)
    assert ran == []


def test_errors_reach_the_caller_and_the_worker_goes_on(queue):
    def boom(_job):
        raise ValueError("bad input")

    failed = queue.submit("a", boom)
    with pytest.raises(ValueError, match="bad input"):
        failed.future.result(5)
    assert queue.submit("a", lambda _j: 42).future.result(5) == 42


def test_find_by_key_and_close_cancels_what_waits():
    q = ModelQueue(max_waiting=4)
    release, holder = _gate(q)
    waiting = q.submit("a", lambda _j: None, kind="text", key="k1")
    assert q.find("k1") is waiting
    assert q.find("nope") is None
    release.set()
    q.close()
    assert holder.future.result(5) == "held"
    assert waiting.future.done()
    with pytest.raises(QueueClosed):
        q.submit("a", lambda _j: None)


def test_with_slots_owners_run_together_but_one_owner_runs_one_job_at_a_time():
    q = ModelQueue(max_waiting=8, slots=3)
    try:
        release = threading.Event()
        running: set[str] = set()
        seen: list[set[str]] = []
        lock = threading.Lock()

        def hold(job):
            with lock:
                running.add(job.key)
                seen.append(set(running))
            release.wait(10)
            with lock:
                running.discard(job.key)

        jobs = [q.submit("a", hold, key="a0"), q.submit("a", hold, key="a1")]
        jobs += [q.submit("b", hold, key="b0"), q.submit("c", hold, key="c0")]
        deadline = threading.Event()
        for _ in range(500):  # the three owners' first jobs start together
            if len(q.running) == 3:
                break
            deadline.wait(0.01)
        assert sorted(j.key for j in q.running) == ["a0", "b0", "c0"]
        assert q.waiting == 1  # a1 waits for a0, though a slot is free later
        release.set()
        for job in jobs:
            job.future.result(5)
        assert all(not {"a0", "a1"} <= s for s in seen)
    finally:
        q.close()
