"""What is known of the RPC this thread serves, for its log lines and its access log line: the request id (the
caller's x-request-id, or one made up), and the model and number of images it used once a model has run it."""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass

HEADER = "x-request-id"
ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # a caller's id is echoed in logs and headers: kept plain


@dataclass
class RequestContext:
    request_id: str
    model: str = ""
    images: int = 0


current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("offshelf_request", default=None)


def request_id_from(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    """The caller's x-request-id when it is plain enough to log and echo; a new one otherwise."""
    for key, value in metadata or ():
        if key == HEADER and isinstance(value, str) and ACCEPTED.fullmatch(value):
            return value
    return uuid.uuid4().hex


def note_model(model: str, images: int) -> None:
    """Records that the current RPC ran `images` through `model` (a search by image and the SDK's calls run one)."""
    context = current.get()
    if context is not None:
        context.model = model
        context.images += images
