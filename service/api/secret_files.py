"""Files that hold secrets or decide who gets in (the tokens file, TLS keys and CAs): refused when other users can
write them, since anyone on the host could then grant themselves access."""

from __future__ import annotations

import os
import pathlib
import stat


def refusal(path: pathlib.Path, status: os.stat_result, setting: str) -> str | None:
    """Why the file must not be used, or None."""
    if status.st_mode & stat.S_IWOTH:
        return (
            f"{path} has mode {oct(stat.S_IMODE(status.st_mode))}: other users can write it, and so grant themselves "
            f"access; chmod o-w {path} (or mount it read-only), then restart or rewrite it ({setting})"
        )
    return None


def others_can_read_mode(mode: int) -> bool:
    return bool(mode & stat.S_IROTH)
