"""One server process per data folder: an exclusive, non-blocking flock on ``<data_dir>/.lock``.

The lock file names its holder (pid, host, start time), so a second server can say who holds it. The kernel
drops the lock when the holder exits, however it exits, so a stale file never blocks a restart.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket

from offshelf.service.errors import StartupError


class DataFolderLock:
    def __init__(self, data_dir: pathlib.Path):
        self.path = data_dir / ".lock"
        self._file: int | None = None

    def acquire(self) -> None:
        """Takes the lock and records this process as its holder; StartupError naming the holder if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise StartupError(
                f"data folder {self.path.parent} is in use by another offshelf server ({holder}); stop it or "
                "give this one another --data-dir"
            ) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._file = fd

    def release(self) -> None:
        if self._file is not None:
            os.close(self._file)  # closing the descriptor drops the flock
            self._file = None
