"""Write-ahead log of one collection: length- and CRC-framed records, fsynced before a write is acknowledged.

A record is ``u32 payload length | u32 crc32(payload) | payload``. Reading stops at a torn
tail (a record cut short or failing its CRC as the last thing in the file: a write that was
never acknowledged) and truncates it away; a bad record with valid bytes after it is
corruption, which is refused rather than skipped.
"""

from __future__ import annotations

import logging
import os
import pathlib
import struct
import zlib
from collections.abc import Iterator

from offshelf.service.logs import fields

log = logging.getLogger(__name__)
HEADER = struct.Struct("<II")


class CorruptLog(Exception):
    pass


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    def __init__(self, path: pathlib.Path):
        self.path = path
        self._file = open(path, "ab")  # noqa: SIM115 - held open for the collection's lifetime

    @property
    def size(self) -> int:
        return self._file.tell()

    def append(self, payload: bytes) -> None:
        """Writes one record and returns once it is on disk."""
        self._file.write(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        os.fsync(self._file.fileno())

    def truncate(self) -> None:
        """Empties the log (after a snapshot made its records redundant)."""
        self._file.truncate(0)
        self._file.seek(0)
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def read(path: pathlib.Path) -> Iterator[bytes]:
        """Yields each intact record's payload; truncates a torn tail; raises CorruptLog mid-log."""
        if not path.exists():
            return
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            if offset + HEADER.size > len(data):
                break
            length, crc = HEADER.unpack_from(data, offset)
            end = offset + HEADER.size + length
            payload = data[offset + HEADER.size : end]
            if end <= len(data) and zlib.crc32(payload) == crc:
                yield payload
                offset = end
                continue
            if end < len(data):
                raise CorruptLog(
                    f"{path}: record at byte {offset} fails its checksum and {len(data) - end} "
                    "bytes follow it; the log is corrupt"
                )
            break
        if offset < len(data):
            log.warning(
                "discarding the torn tail of a write-ahead log (a write that was never acknowledged)",
                extra=fields(path=str(path), offset=offset, bytes=len(data) - offset),
            )
            with open(path, "r+b") as f:
                f.truncate(offset)
                os.fsync(f.fileno())
