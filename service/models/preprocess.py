"""Encoded image bytes -> the model's input tensor, as the model card says.

Matches torchvision's Resize(shorter side) + CenterCrop + ToTensor + Normalize, which the
export tool uses for its parity check. JPEGs much larger than the target are decoded at a
reduced DCT scale (PIL draft mode), which is several times faster.
"""

from __future__ import annotations

import contextlib
import enum
import io
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.service.errors import DecodeError, InvalidArgument, Unavailable

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
MAX_ASPECT = 20  # longer side over shorter side: resizing the shorter side multiplies the longer one
# Pillow decodes WebP through libwebp's animation decoder, which holds four RGBA planes (and a lossless WebP
# cannot be decoded at a reduced size: libwebp keeps its whole ARGB plane): a 7000x7000 lossless WebP of 2 KB took
# +940 MB, three times a PNG of that size. A WebP's pixels count four times against the limits.
WEBP_COST = 4


class Augmentation(enum.IntEnum):
    """Views of each image whose embeddings are averaged (the wire's Augmentation enum has the same values)."""

    NONE = 0
    FLIP = 1  # the image and its mirror
    TEN_CROP = 2  # the corners and centre of the image and of its mirror


VIEWS_PER_IMAGE: dict[int, int] = {Augmentation.NONE: 1, Augmentation.FLIP: 2, Augmentation.TEN_CROP: 10}
MODES = ("crop", "no-crop", "fit")  # the card's preprocessing modes
MIN_SIDE = 32  # pixels of a side kept whole, at least
_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


# What Pillow's parsers raise on malformed files: its own fuzzers' list, and what ours found (struct.error, EOFError
# and the lookups of malformed metadata).
DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    NotImplementedError,
    OverflowError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
)
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose has it).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says; as it is when the EXIF block is broken (the pixels are
    fine). Only the tag is read: ImageOps.exif_transpose also writes the block back, which fails on entries whose
    declared type does not fit their tag (struct.error)."""
    try:
        if image.format == "JPEG":
            orientation = jpeg_orientation(image.info.get("exif", b""))
        else:
            orientation = image.getexif().get(0x0112)
    except DECODER_ERRORS:
        return image
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def jpeg_orientation(exif: bytes) -> int | None:
    """The orientation tag of a JPEG's EXIF block (APP1: "Exif\0\0", then a TIFF header and its first IFD), read
    alone: Pillow's getexif() parses every entry of the IFD, which took a sixth of the server's time holding the GIL
    on camera photos (bench/frontend.py)."""
    if not exif.startswith(b"Exif\x00\x00"):
        return None
    tiff = memoryview(exif)[6:]
    order = {b"II": "<", b"MM": ">"}[bytes(tiff[:2])]
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    (entries,) = struct.unpack_from(order + "H", tiff, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag == 0x0112:  # a SHORT, as the standard has it
            return struct.unpack_from(order + "H", tiff, entry + 8)[0] if kind == 3 else None
    return None


def eight_bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale (16-bit PNG opens as I;16 or I) scaled to 8 bits: convert("RGB") would clip every
    value above 255 to white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, np.uint32) >> 8
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    return image


@contextlib.contextmanager
def decode_errors(name: str, data: bytes) -> Iterator[None]:
    """Pillow's errors as DecodeError (INVALID_ARGUMENT) naming the image."""
    try:
        yield
    except UnidentifiedImageError as err:
        raise DecodeError(
            f"{name} is not a JPEG, PNG, WebP or GIF file ({len(data)} bytes)", "unsupported_format"
        ) from err
    except (*DECODER_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError(f"{name} could not be decoded ({err}); send a complete, valid file", "corrupt") from err


def normalisation(spec: card_pb2.Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) per channel that take a uint8 pixel to the model's input: pixel * scale + offset, which is
    (pixel / 255 - mean) / std."""
    std = np.asarray(spec.std, np.float32)
    return 1.0 / (255.0 * std), -np.asarray(spec.mean, np.float32) / std


def decode_cost(image: Image.Image) -> int:
    """What decoding an opened image will cost, in pixels of a JPEG or PNG (3 to 8 bytes each while decoded and
    resized)."""
    return image.width * image.height * (WEBP_COST if image.format == "WEBP" else 1)


class PixelBudget:
    """Pixels being decoded at once, over every request and model: large images wait for each other instead of
    all holding their full-size bitmaps together (8 concurrent 7000x7000 PNGs took 4.8 GB). An image larger than
    the budget runs alone. A wait longer than `wait_seconds` is UNAVAILABLE."""

    def __init__(self, pixels: int, wait_seconds: float = 30.0):
        self.pixels = pixels
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, name: str) -> Iterator[None]:
        pixels = min(pixels, self.pixels)
        deadline = time.monotonic() + self.wait_seconds
        with self._condition:
            while self.in_use + pixels > self.pixels:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(f"{name}: the server is decoding as many pixels as it may at once; retry")
                self._condition.wait(remaining)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= pixels
                self._condition.notify_all()


def mode_of(spec: card_pb2.Preprocessing) -> str:
    """crop, no-crop or fit (cards from before the field existed crop)."""
    return spec.mode or "crop"


def input_size(spec: card_pb2.Preprocessing) -> tuple[int, int]:
    """(height, width) of the graph's input: the crop, or -1 for each side of an image kept whole (any size)."""
    return (spec.crop_height, spec.crop_width) if mode_of(spec) == "crop" else (-1, -1)


@dataclass(frozen=True)
class InputRule:
    """What (height, width) a preprocessed input may have, for clients that preprocess images themselves (OIP
    tensors): the sides as a message shows them ("224" or "H") with the condition on them, and the check."""

    height: str
    width: str
    condition: str  # "" for a fixed size
    fits: Callable[[int, int], bool]


def input_rule(spec: card_pb2.Preprocessing) -> InputRule:
    size, mode = spec.resize_shorter, mode_of(spec)
    if mode == "crop":
        crop = (spec.crop_height, spec.crop_width)
        return InputRule(str(crop[0]), str(crop[1]), "", lambda h, w: (h, w) == crop)
    if mode == "no-crop":
        words, sized = f"the shorter side {size}", lambda h, w: min(h, w) == size
    else:
        words, sized = (
            f"the longer side {size} (or the shorter {MIN_SIDE})",
            lambda h, w: size in (h, w) or (min(h, w) == MIN_SIDE),
        )
    return InputRule(
        "H",
        "W",
        f" with H x W {words}, at most {MAX_ASPECT}:1",
        lambda h, w: sized(h, w) and max(h, w) <= MAX_ASPECT * min(h, w),
    )


class Preprocessor:
    def __init__(self, spec: card_pb2.Preprocessing, max_pixels: int, budget: PixelBudget | None = None):
        if spec.interpolation not in _RESAMPLING:
            raise ValueError(f"unsupported interpolation {spec.interpolation!r}")
        if mode_of(spec) not in MODES:
            raise ValueError(f"unknown mode {spec.mode!r}; one of {', '.join(MODES)}")
        if mode_of(spec) == "crop" and spec.resize_shorter < max(spec.crop_height, spec.crop_width):
            raise ValueError("resize_shorter must be at least the crop size")
        self.cropped = mode_of(spec) == "crop"
        if not self.cropped and spec.resize_shorter < MIN_SIDE:
            raise ValueError(f"resize_shorter must be at least {MIN_SIDE} for an image kept whole")
        self.spec = spec
        self.max_pixels = max_pixels
        self._resample = _RESAMPLING[spec.interpolation]
        self._scale, self._offset = normalisation(spec)
        self._bgr = spec.channel_order == "BGR"
        self.budget = budget or PixelBudget(max_pixels)

    def decode(self, data: bytes, name: str = "image 0") -> Image.Image:
        """An RGB image upright per its EXIF orientation; InvalidArgument messages start with name."""
        return self._decoded(self._open(data, name), name)

    def views_of(self, data: bytes, name: str, augmentation: int) -> list[np.ndarray]:
        """decode() then views() (uint8 pixels), holding the image's pixels in the decode budget while it is decoded
        and resized."""
        opened = self._open(data, name)
        with self.budget.hold(decode_cost(opened), name):
            return self.views(self._decoded(opened, name), augmentation)

    def _open(self, data: bytes, name: str) -> Image.Image:
        """The image's header, read and checked (format, pixels, aspect ratio); no pixel is decoded yet."""
        if not data:
            raise DecodeError(f"{name} is empty: send the encoded bytes of a JPEG, PNG, WebP or GIF file", "empty")
        with decode_errors(name, data):
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened = Image.open(io.BytesIO(data), formats=FORMATS)
            if decode_cost(opened) > self.max_pixels:
                webp = f" (a WebP's count {WEBP_COST} times: its decoder needs {WEBP_COST}x the memory)"
                raise DecodeError(
                    f"{name} has {opened.width}x{opened.height} pixels{webp if opened.format == 'WEBP' else ''}, "
                    f"more than the limit of {self.max_pixels}; downscale it before sending",
                    "too_large",
                )
            short, long = sorted(opened.size)
            if long > MAX_ASPECT * max(short, 1):
                raise DecodeError(
                    f"{name} is {opened.width}x{opened.height} pixels, longer than {MAX_ASPECT}:1; resizing its "
                    "shorter side would make it enormous: crop it first",
                    "too_large",
                )
        return opened

    def _decoded(self, opened: Image.Image, name: str) -> Image.Image:
        with decode_errors(name, b""):
            if opened.format == "JPEG":
                opened.draft("RGB", self._resized_size(opened.width, opened.height))
            return upright(eight_bit(opened)).convert("RGB")

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """crop and no-crop: torchvision's Resize(int), the shorter side becomes resize_shorter and the longer one
        scales (floored); fit: the longer side becomes resize_shorter. A side kept whole is never below MIN_SIDE
        (one cell of a stride-32 network's last map)."""
        short, long = sorted((width, height))
        size = self.spec.resize_shorter
        if mode_of(self.spec) == "fit":
            target_short, target_long = int(size * short / long), size
            if target_short < MIN_SIDE:  # the aspect kept: the longer side grows
                target_short, target_long = MIN_SIDE, int(MIN_SIDE * long / short)
        else:
            target_short, target_long = size, int(size * long / short)
        return (target_short, target_long) if width <= height else (target_long, target_short)

    def to_tensor(self, image: Image.Image) -> np.ndarray:
        """(3, height, width) float32, normalised: the centre crop (or whole image), as the graph's FP32 input takes
        it."""
        return self.normalise(self.views(image, Augmentation.NONE)[0])

    def views_per_image(self, augmentation: int) -> int:
        """How many views views() makes of one image; InvalidArgument for an augmentation it does not know, or ten
        crops of a model that keeps images whole."""
        if augmentation not in VIEWS_PER_IMAGE:
            raise InvalidArgument(f"augmentation {augmentation} is unknown; use NONE, FLIP or TEN_CROP")
        if augmentation == Augmentation.TEN_CROP and not self.cropped:
            raise InvalidArgument(
                f"ten crops need a model that crops its input; this one keeps images whole "
                f"({mode_of(self.spec)}): use no augmentation or flip"
            )
        return VIEWS_PER_IMAGE[augmentation]

    def views(self, image: Image.Image, augmentation: int) -> list[np.ndarray]:
        """The centre crop (no-crop, fit: the whole resized image); with FLIP also its mirror image; with TEN_CROP
        the four corner crops, the centre crop and their mirror images (torchvision's TenCrop). Each as uint8 RGB
        pixels (height, width, 3): what the graph's pixels input takes (pixels_input.py)."""
        image = image.resize(self._resized_size(image.width, image.height), self._resample)
        if not self.cropped:
            whole = [image, ImageOps.mirror(image)] if augmentation == Augmentation.FLIP else [image]
            return [np.asarray(view) for view in whole]
        crop_h, crop_w = self.spec.crop_height, self.spec.crop_width
        top = int(round((image.height - crop_h) / 2.0))
        left = int(round((image.width - crop_w) / 2.0))
        boxes = [(left, top)]
        if augmentation == Augmentation.TEN_CROP:
            right, bottom = image.width - crop_w, image.height - crop_h
            boxes = [(0, 0), (right, 0), (0, bottom), (right, bottom), (left, top)]
        crops = [image.crop((x, y, x + crop_w, y + crop_h)) for x, y in boxes]
        if augmentation != Augmentation.NONE:
            crops += [ImageOps.mirror(crop) for crop in crops]
        return [np.asarray(crop) for crop in crops]

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB pixels (H, W, 3) -> the FP32 input (3, H, W): channel order, mean and std as the card says."""
        values = pixels.astype(np.float32)
        if self._bgr:
            values = values[..., ::-1]
        return (values * self._scale + self._offset).transpose(2, 0, 1)

    def __call__(self, data: bytes, name: str = "image 0") -> np.ndarray:
        return self.to_tensor(self.decode(data, name))
