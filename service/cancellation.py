"""The caller of the RPC this thread serves has gone (cancelled, or its deadline passed): work for it stops.

The interceptor makes one Call per RPC and gRPC calls its cancel() when the RPC ends; the batcher attaches the
futures of the chunks it queued for the call, so that chunks not yet running are dropped rather than inferred, and
decoding checks it between images.
"""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import Future

from offshelf.service.errors import Cancelled


class Call:
    def __init__(self) -> None:
        self.cancelled = False
        self.cancelled_at = float("inf")  # time.monotonic() of the cancellation
        self._futures: list[Future] = []
        self._lock = threading.Lock()

    def attach(self, futures: list[Future]) -> None:
        with self._lock:
            self._futures += futures
            if not self.cancelled:
                return
        for future in futures:
            future.cancel()

    def cancel(self) -> None:
        """Called by gRPC when the RPC ends, however it ends: futures already done are left as they are."""
        with self._lock:
            self.cancelled_at = min(self.cancelled_at, time.monotonic())
            self.cancelled = True
            futures = list(self._futures)
        for future in futures:
            future.cancel()


current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("offshelf_call", default=None)


def check() -> None:
    """Cancelled when this thread's caller has gone."""
    call = current.get()
    if call is not None and call.cancelled:
        raise Cancelled("the caller cancelled the call or its deadline passed")


def attach(futures: list[Future]) -> None:
    call = current.get()
    if call is not None:
        call.attach(futures)
