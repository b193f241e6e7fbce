"""The small JPEG a collection created with thumbnail_size keeps of each image item, for pages that show hits as
pictures. Made from an image the model has already decoded within the server's limits."""

from __future__ import annotations

import io

from PIL import Image

from offshelf.service.models.preprocess import upright

MIN_SIZE, MAX_SIZE = 16, 256
QUALITIES = (80, 60, 40)  # lowered until the JPEG fits in MAX_BYTES (a noisy photo at 256 px may not at 80)
MAX_BYTES = 32 * 1024


def thumbnail(image: bytes, size: int) -> bytes:
    """A JPEG of the image (EXIF orientation applied, RGB) at most `size` pixels on its longer side."""
    with Image.open(io.BytesIO(image)) as opened:
        opened.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is still larger
        picture = upright(opened).convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    for quality in QUALITIES:
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=quality, optimize=True)
        if buffer.tell() <= MAX_BYTES:
            break
    return buffer.getvalue()
