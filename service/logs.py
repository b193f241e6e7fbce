"""Structured logs: one JSON object per line on stderr; lines logged while an RPC is served carry its request id."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

from offshelf.service import request_context


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        request = request_context.current.get()
        if request is not None:
            entry.setdefault("request_id", request.request_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str) -> None:
    """JSON lines at `level`. gRPC core writes its own lines (not JSON) straight to stderr, one per failed TLS
    handshake among them ("Handshake failed", logged at its INFO: any client that connects without TLS adds one):
    they are kept to its errors unless the level is DEBUG, or GRPC_VERBOSITY says otherwise. It is read when gRPC
    starts, so this runs before the first server or channel."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if logging.getLevelName(level) > logging.DEBUG:  # which SIMD builds it could not load ("Could not load library")
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    os.environ.setdefault("GRPC_VERBOSITY", "INFO" if logging.getLevelName(level) <= logging.DEBUG else "ERROR")


def fields(**values: object) -> dict[str, dict[str, object]]:
    """Extra structured fields for a log call: ``log.info("msg", extra=fields(model=...))``."""
    return {"fields": values}
