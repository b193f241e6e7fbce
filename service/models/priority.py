"""CPU priority of inference: below the RPC threads, so that a server whose CPU inference saturates still refuses
calls at once and answers health checks, while inference takes every cycle they leave."""

from __future__ import annotations

import os
import sys
import threading


def lower_this_thread(niceness: int) -> None:
    """Gives the calling thread Linux nice value `niceness` (0 leaves it); threads it starts inherit it, which is
    how onnxruntime's intra-op threads and a model's batcher get it. Elsewhere than on Linux nothing changes (nice
    values are per process there)."""
    if niceness and sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
