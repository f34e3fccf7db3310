"""The pipelines behind the server: loaded once, at start; CPU-bound work runs in a bounded
pool, one request per pipeline at a time, with a bounded queue and a per-request timeout."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from neurosono.core.images import LoadedImage
from neurosono.core.runtime import cpu_cores
from neurosono.pipeline.predict import Pipeline
from neurosono.serve.problems import ProblemError
from neurosono.serve.settings import ServeSettings

T = TypeVar("T")
RETRY_AFTER_S = 2


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores (onnxruntime's intra-op threads, torch's threads)."""
    return max(1, cpu_cores() // workers)


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def warm_up(pipeline: Pipeline) -> None:
    """One prediction on a blank pair, so that the first real case does not pay for the
    libraries' lazy set-up (a second on torch)."""
    blank = np.full((384, 512), 40, np.uint8)
    images = {p: LoadedImage(Path(p), blank.copy(), 0.2, "warm-up") for p in ("tv", "tc")}
    pipeline.predict_loaded(images)


class Engine:
    """``pipelines`` each serve one request at a time; at most ``queue`` more wait for one."""

    def __init__(self, pipelines: list[Pipeline], queue_size: int = 16, timeout_s: float = 60.0) -> None:
        if not pipelines:
            raise ValueError("an engine needs at least one pipeline")
        self.info = pipelines[0].model_info
        self.meta = pipelines[0].meta
        self.regions = list(pipelines[0].detector.regions)
        self.has_biometry = pipelines[0].head_model is not None
        self._free: queue.Queue[Pipeline] = queue.Queue()
        for pipeline in pipelines:
            self._free.put(pipeline)
        self.workers = len(pipelines)
        self.capacity = len(pipelines) + queue_size
        self.timeout_s = timeout_s
        self._pending = 0
        self._lock = threading.Lock()
        # torch's intra-op thread count is per thread, and a new thread starts from
        # OMP_NUM_THREADS (which ultralytics sets to cores - 1): each worker sets its own share.
        threads = threads_per_worker(len(pipelines))
        self._pool = ThreadPoolExecutor(
            len(pipelines),
            thread_name_prefix="neurosono-worker",
            initializer=_set_torch_threads,
            initargs=(threads,),
        )

    @classmethod
    def load(cls, settings: ServeSettings) -> Engine:
        """Load ``settings.workers`` pipelines, sharing the cores between them."""
        threads = threads_per_worker(settings.workers)
        pipelines = [
            Pipeline.load(settings.model, runtime=settings.runtime, threads=threads, notify=lambda m: None)
            for _ in range(settings.workers)
        ]
        for pipeline in pipelines:
            warm_up(pipeline)
        return cls(pipelines, settings.queue, settings.timeout_s)

    @property
    def pending(self) -> int:
        """Requests running or waiting."""
        return self._pending

    def _release(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    def _call(self, work: Callable[[Pipeline], T]) -> T:
        pipeline = self._free.get()
        try:
            return work(pipeline)
        finally:
            self._free.put(pipeline)

    async def run(self, work: Callable[[Pipeline], T]) -> T:
        """``work(pipeline)`` on a free pipeline; 503 when the queue is full, 504 past the timeout."""
        with self._lock:
            if self._pending >= self.capacity:
                raise ProblemError(
                    503,
                    f"the server is busy ({self._pending} requests running or waiting); retry shortly",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self._pending += 1
        future = self._pool.submit(self._call, work)
        # The slot is freed when the work ends, not when a timed-out request gives up on it,
        # so the queue stays bounded by the work really in hand.
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            raise ProblemError(504, f"the case took longer than the {self.timeout_s:g} s limit") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
