"""Service-side decoding and preprocessing against torchvision's version of the same card."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from offshelf.export.repository import card_transform
from offshelf.protos.v1 import model_card_pb2
from offshelf.service.errors import InvalidArgument
from offshelf.service.models.preprocess import Augmentation, Preprocessor

from common import skimage_photo

SPEC = model_card_pb2.Preprocessing(
    input_name="image",
    resize_shorter=256,
    crop_height=224,
    crop_width=224,
    interpolation="bilinear",
    channel_order="RGB",
    mean=[0.5] * 3,
    std=[0.5] * 3,
)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("photo", ["chelsea.png", "astronaut.png", "coffee.png"])
def test_matches_torchvision_on_lossless_photos(photo):
    data = skimage_photo(photo).read_bytes()
    ours = Preprocessor(SPEC, 10**8)(data)
    theirs = card_transform(SPEC)(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert np.abs(ours - theirs).max() < 1e-5


def test_exif_orientation_is_applied():
    image = Image.open(skimage_photo("chelsea.png")).convert("RGB")  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    decoded = Preprocessor(SPEC, 10**8).decode(encode(image, "JPEG", exif=exif))
    assert decoded.size == (300, 451)


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG", "PNG"])
def test_exif_orientation_is_read_from_a_block_pillow_cannot_rewrite(fmt):
    """ImageWidth declared ASCII: Pillow reads the block but cannot write it back (struct.error)."""
    exif = (
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02"
        b"\x01\x00\x00\x02\x00\x00\x00\x05\x00\x00\x00\x26"
        b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
        b"\x00\x00\x00\x00fuzz\x00"
    )
    image = Image.open(skimage_photo("chelsea.png")).convert("RGB")  # 451 wide, 300 high
    decoded = Preprocessor(SPEC, 10**8).decode(encode(image, fmt, exif=exif))
    assert decoded.size == (300, 451)


def test_gif_first_frame_and_webp_decode():
    image = Image.open(skimage_photo("coffee.png")).convert("RGB")
    pre = Preprocessor(SPEC, 10**8)
    for data in (encode(image, "GIF"), encode(image, "WEBP")):
        assert pre(data).shape == (3, 224, 224)


def test_large_jpeg_is_decoded_in_draft_mode_close_to_full_decode():
    image = Image.open(skimage_photo("astronaut.png")).convert("RGB").resize((2048, 2048))
    data = encode(image, "JPEG", quality=95)
    pre = Preprocessor(SPEC, 10**8)
    assert max(pre.decode(data).size) < 2048  # decoded at a reduced DCT scale
    full = card_transform(SPEC)(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    assert np.abs(pre(data) - full).mean() < 0.02


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "image 0 is empty"),
        (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "could not be decoded"),
        (b"%PDF-1.7 ...", "not a JPEG, PNG, WebP or GIF"),
        (encode(Image.new("RGB", (64, 64)), "BMP"), "not a JPEG, PNG, WebP or GIF"),
        (encode(Image.new("RGB", (300, 300)), "PNG"), "more than the limit of 40000"),
    ],
)
def test_bad_images_are_invalid_arguments(data, message):
    with pytest.raises(InvalidArgument, match=message):
        Preprocessor(SPEC, 40_000)(data)


def whole(mode: str, size: int) -> Preprocessor:
    spec = model_card_pb2.Preprocessing()
    spec.CopyFrom(SPEC)
    spec.mode, spec.resize_shorter, spec.crop_height, spec.crop_width = mode, size, 0, 0
    return Preprocessor(spec, 10**8)


@pytest.mark.parametrize(
    ("mode", "size", "image", "shape"),
    [
        ("no-crop", 224, (320, 240), (224, 298)),  # the shorter side S, nothing cut
        ("fit", 224, (320, 240), (168, 224)),  # the longer side S
        ("fit", 224, (600, 40), (32, 480)),  # never below 32 pixels a side
    ],
)
def test_an_image_kept_whole_matches_torchvision(mode, size, image, shape):
    preprocessor = whole(mode, size)
    photo = Image.open(skimage_photo("chelsea.png")).convert("RGB").resize(image)
    data = encode(photo, "PNG")
    (view,) = preprocessor.views_of(data, "image 0", Augmentation.NONE)
    assert view.shape == (*shape, 3)
    theirs = card_transform(preprocessor.spec, whole=True)(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    np.testing.assert_allclose(preprocessor.normalise(view), theirs, atol=0.02)  # Pillow vs torchvision rounding
    flipped = preprocessor.views_of(data, "image 0", Augmentation.FLIP)
    np.testing.assert_array_equal(flipped[1], flipped[0][:, ::-1])
    with pytest.raises(InvalidArgument, match="ten crops need a model that crops its input"):
        preprocessor.views_per_image(Augmentation.TEN_CROP)
