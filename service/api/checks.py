"""Request checks the servicers share."""

from __future__ import annotations

import re

from offshelf.service.errors import InvalidArgument

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(what: str, name: str) -> None:
    """A collection or head name: it becomes a folder name, so only safe characters."""
    if not NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 130 else f"{name[:60]!r}... ({len(name)} characters)"
        raise InvalidArgument(
            f"{what} name {shown} is invalid: use 1-128 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )


def check_image_count(count: int, limit: int) -> None:
    """The image count of a request: at least one, at most the server's limit."""
    if not count:
        raise InvalidArgument("no images: send at least one encoded image in images")
    check_image_limit(count, limit)


def check_image_limit(count: int, limit: int, what: str = "images") -> None:
    """Images a request has embedded in one model call: at most max_images_per_request, checked before any is
    decoded."""
    if count > limit:
        raise InvalidArgument(
            f"{count} {what} in one request, more than the limit of {limit} images (max_images_per_request); "
            "send vectors where the call takes them, or split the images over several requests"
        )
