"""Micro-batching: concurrent requests share one model call, grouped by engine so a hot
reload never mixes versions in a batch. How: docs/guide/serving.md.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BatchFn = Callable[[Any, list[Any]], list[Any]]
"""(engine, payloads) → one result per payload."""


@dataclass
class Job:
    kind: str
    engine: Any
    payload: Any
    future: asyncio.Future  # resolved on its own event loop


def _resolve(fut: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if fut.done():  # the client went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class MicroBatcher:
    def __init__(self, handlers: dict[str, BatchFn], max_batch: int = 32, wait_ms: float = 0.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.handlers = handlers
        self.max_batch = max(1, max_batch)
        self.wait_s = max(0.0, wait_ms) / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="recfm-batcher", daemon=True)
        self._thread.start()

    async def submit(self, kind: str, engine: Any, payload: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._queue.put(Job(kind, engine, payload, fut))
        return await fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _take(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.perf_counter() + self.wait_s
        while len(jobs) < self.max_batch:
            try:
                left = deadline - time.perf_counter()
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            groups: dict[tuple[str, int], list[Job]] = {}
            for job in jobs:
                key = id(job) if job.kind == "call" else id(job.engine)  # calls run alone
                groups.setdefault((job.kind, key), []).append(job)
            for (kind, _), group in groups.items():
                if self.on_batch is not None:
                    self.on_batch(len(group))
                try:
                    results = self.handlers[kind](group[0].engine, [j.payload for j in group])
                    errors: list[BaseException | None] = [None] * len(group)
                except Exception as e:  # one bad batch must not stop the worker
                    if len(group) > 1:  # retry one by one so one bad request fails alone
                        results, errors = [], []
                        for j in group:
                            try:
                                results.append(self.handlers[kind](j.engine, [j.payload])[0])
                                errors.append(None)
                            except Exception as e1:
                                results.append(None)
                                errors.append(e1)
                    else:
                        results, errors = [None], [e]
                for job, value, error in zip(group, results, errors):
                    job.future.get_loop().call_soon_threadsafe(_resolve, job.future, value, error)
