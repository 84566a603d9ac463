"""SQLite readers: threads with their own connections, reading beside the writer (WAL)."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from sqlalchemy import Engine

from statestore.db.runner import translated
from statestore.db.thread_jobs import Job, Outcome, ThreadState, Work, deliver


class ReaderPool:
    """``size`` threads taking read jobs from one queue; each job in its own read
    transaction (``BEGIN``), so it sees one consistent snapshot."""

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine = engine
        self.size = size
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def run(self, work: Work, loop: asyncio.AbstractEventLoop) -> Any:
        """Queue ``work`` for a reader and await its outcome."""
        if not self._threads:
            with self._lock:
                if not self._threads:
                    self._threads = [
                        threading.Thread(
                            target=self._loop, name=f"statestore-reader-{number}", daemon=True
                        )
                        for number in range(self.size)
                    ]
                    for thread in self._threads:
                        thread.start()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(Job(work, loop, future))
        return await future

    async def stop(self) -> None:
        """Let the threads finish what is queued, then stop them."""
        for _thread in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)

    def _loop(self) -> None:
        state = ThreadState()
        while (job := self._jobs.get()) is not None:
            outcome: Outcome
            try:
                if state.connection is None:
                    state.connection = self.engine.connect()
                with state.connection.begin():
                    outcome = (job.work(state.connection, state.session), None)
            except BaseException as exc:
                outcome = (None, translated(exc))
                state.after_failure()
            deliver([job], [outcome])
        state.close()
