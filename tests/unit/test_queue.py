"""The work queue: de-duplication, one worker per key, delayed re-adds."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.queue import ShutDown, WorkQueue


def test_a_key_is_queued_once() -> None:
    q = WorkQueue()
    for _ in range(3):
        q.add(1)
    q.add(2)
    assert len(q) == 2
    assert q.get(timeout=0) == 1
    assert q.get(timeout=0) == 2
    assert q.get(timeout=0) is None


def test_a_key_in_progress_is_not_handed_out_again_until_done() -> None:
    q = WorkQueue()
    q.add("job")
    assert q.get(timeout=0) == "job"
    q.add("job")  # changed while being processed
    assert q.get(timeout=0) is None, "never two workers on one key"
    q.done("job")
    assert q.get(timeout=0) == "job", "re-queued after done because it was added meanwhile"
    q.done("job")
    assert q.get(timeout=0) is None


def test_add_after_delays_and_keeps_the_earliest_deadline() -> None:
    q = WorkQueue()
    q.add_after("k", 0.3)
    q.add_after("k", 0.05)
    q.add_after("k", 5)
    assert q.delayed == 1
    assert q.get(timeout=0) is None
    started = time.monotonic()
    assert q.get(timeout=2) == "k"
    assert 0.03 <= time.monotonic() - started < 0.3


def test_add_after_zero_is_immediate() -> None:
    q = WorkQueue()
    q.add_after(7, 0)
    assert q.get(timeout=0) == 7


def test_shutdown_wakes_waiting_workers() -> None:
    q = WorkQueue()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            q.get()
        except ShutDown as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.05)
    q.shutdown()
    thread.join(2)
    assert not thread.is_alive() and len(errors) == 1
    with pytest.raises(ShutDown):
        q.get(timeout=0)


def test_many_workers_never_share_a_key() -> None:
    q = WorkQueue()
    active: set[int] = set()
    lock = threading.Lock()
    clashes: list[int] = []
    processed: list[int] = []

    def worker() -> None:
        while True:
            key = q.get(timeout=0.2)
            if key is None:
                return
            with lock:
                if key in active:
                    clashes.append(key)  # type: ignore[arg-type]
                active.add(key)  # type: ignore[arg-type]
            time.sleep(0.001)
            with lock:
                active.discard(key)  # type: ignore[arg-type]
                processed.append(key)  # type: ignore[arg-type]
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for round_ in range(50):
        for key in range(10):
            q.add(key)
        if round_ % 10 == 0:
            time.sleep(0.005)
    for t in threads:
        t.join(5)
    assert clashes == []
    assert set(processed) == set(range(10))
    assert q.idle()


def test_urgent_keys_jump_the_queue() -> None:
    q = WorkQueue()
    for key in (1, 2, 3):
        q.add(key)
    q.add(3, urgent=True)
    q.add(9, urgent=True)
    assert [q.get(timeout=0) for _ in range(4)] == [9, 3, 1, 2]
