"""Background rounds: a piece of work run every so many seconds on a daemon thread of its own until an event is set
(the repository poll, the heads' sync, saving indexes, probing Milvus)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def every(
    seconds: float,
    work: Callable[[], None],
    stop: threading.Event,
    name: str,
    quiet: tuple[type[Exception], ...] = (),
) -> threading.Thread:
    """Starts the rounds. A round that raises is logged with its traceback (an exception of a `quiet` kind is
    not: its cause is logged once elsewhere) and the next round runs as planned."""

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                work()
            except quiet:
                pass
            except Exception:
                log.exception("a background round failed; the next one runs as planned", extra={"thread": name})

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
