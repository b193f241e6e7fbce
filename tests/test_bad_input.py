"""Hostile and careless input (issue 14, section 3): each gets a precise status naming the fix, never INTERNAL, a
wrong answer or unbounded work. On the tiny model: what is checked is the input, not the network."""

from __future__ import annotations

import io
import uuid

import grpc
import numpy as np
import pytest
from PIL import Image

from offshelf.clients import Client
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from offshelf.protos.v1 import embedding_pb2, index_pb2

from common import ServerProcess, shared_photos

TINY = "random-projection-1280"


@pytest.fixture(scope="module")
def client(tiny_server):
    with Client(tiny_server.address, timeout=60) as c:
        yield c


def status_of(call) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code().name, caught.value.details()


def test_an_oip_version_that_is_not_a_plain_number_is_invalid(client):
    request = oip.ModelMetadataRequest(name=TINY, version="²")  # str.isdigit() is true, int() fails
    stub = oip_grpc.GRPCInferenceServiceStub(client._channel)
    code, details = status_of(lambda: stub.ModelMetadata(request, timeout=30))
    assert code == "INVALID_ARGUMENT" and "not a number" in details


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        ({"index_type": "ivfpq", "ivfpq": {"nlist": 100_000_000}}, "nlist"),
        ({"index_type": "ivfpq", "ivfpq": {"nprobe": 1_000_000}}, "nprobe"),
        ({"index_type": "ivfpq", "ivfpq": {"refine_factor": 100_000}}, "refine_factor"),
        ({"index_type": "ivfpq", "ivfpq": {"train_size": 2_000_000_000}}, "train_size"),
        ({"index_type": "hnsw", "hnsw": {"ef_construction": 50_000_000}}, "ef_construction"),
        ({"index_type": "hnsw", "hnsw": {"ef_search": 50_000_000}}, "ef_search"),
    ],
)
def test_index_parameters_are_bounded(client, options, hint):
    code, details = status_of(
        lambda: client.create_collection(f"bounded-{uuid.uuid4().hex[:8]}", model=TINY, **options)
    )
    assert code == "INVALID_ARGUMENT" and hint in details


def test_search_time_parameters_are_bounded(client):
    name = f"bounded-{uuid.uuid4().hex[:8]}"
    client.create_collection(name, model=TINY, index_type="hnsw")
    client.add(name, vectors=np.eye(4, 1280, dtype=np.float32) + 0.01)
    code, details = status_of(lambda: client.search(name, vector=np.ones(1280), k=1, ef_search=50_000_000))
    assert code == "INVALID_ARGUMENT" and "ef_search" in details
    code, details = status_of(lambda: client.search(name, vector=np.ones(1280), k=1, nprobe=50_000_000))
    assert code == "INVALID_ARGUMENT" and "nprobe" in details
    client.delete_collection(name)


def test_undefined_enum_values_are_refused(client):
    request = embedding_pb2.EmbedRequest(
        model=TINY, images=[shared_photos("ukbench", 1)[0].read_bytes()], augmentation=99
    )
    code, details = status_of(lambda: client.stubs["embedding"].Embed(request, timeout=30))
    assert code == "INVALID_ARGUMENT" and "augmentation 99" in details
    create = index_pb2.CreateCollectionRequest(name=f"enum-{uuid.uuid4().hex[:8]}", model=TINY, metric=99)
    code, details = status_of(lambda: client.stubs["index"].CreateCollection(create, timeout=30))
    assert code == "INVALID_ARGUMENT" and "metric 99" in details


def test_a_vector_whose_norm_overflows_is_refused_not_stored_as_zeros(client):
    name = f"overflow-{uuid.uuid4().hex[:8]}"
    client.create_collection(name, model=TINY)
    code, details = status_of(lambda: client.add(name, vectors=[[1e38] * 1280]))
    assert code == "INVALID_ARGUMENT" and "too large" in details
    assert client.get_collection(name).count == 0
    client.delete_collection(name)


def test_error_messages_do_not_echo_whole_inputs(client):
    code, details = status_of(lambda: client.create_collection("x" * 100_000 + "!", model=TINY))
    assert code == "INVALID_ARGUMENT" and "is invalid" in details and len(details) < 1000
    code, details = status_of(lambda: client.get_collection("y" * 100_000))
    assert code == "NOT_FOUND" and len(details) < 1000


def test_labels_and_the_size_of_a_search_batch_are_bounded(client):
    name = f"sizes-{uuid.uuid4().hex[:8]}"
    client.create_collection(name, model=TINY)
    code, details = status_of(lambda: client.add(name, vectors=[np.ones(1280)], labels=["l" * 8192]))
    assert code == "INVALID_ARGUMENT" and "label" in details
    client.add(name, vectors=np.eye(2, 1280, dtype=np.float32) + 0.01)
    queries = np.ones((1000, 1280), np.float32)
    code, details = status_of(lambda: client.search_batch(name, vectors=queries, k=1000))
    assert code == "INVALID_ARGUMENT" and "queries x k" in details
    client.delete_collection(name)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_16_bit_cmyk_la_and_palette_images_embed_like_their_8_bit_rgb_versions(client):
    photo = Image.open(shared_photos("ukbench", 1)[0])
    gray = photo.convert("L")
    sixteen = Image.fromarray((np.asarray(gray, np.uint16) * 257).astype(np.uint16))  # I;16, full range
    variants = {
        "16-bit gray": (encoded(sixteen, "PNG"), encoded(gray, "PNG")),
        "LA": (encoded(gray.convert("LA"), "PNG"), encoded(gray, "PNG")),
        "CMYK": (encoded(photo.convert("CMYK"), "JPEG", quality=95), encoded(photo, "JPEG", quality=95)),
        "palette": (encoded(photo.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), encoded(photo, "PNG")),
    }
    for mode, (variant, reference) in variants.items():
        embeddings = client.embed([variant, reference], model=TINY)["embedding"]
        assert cosine(embeddings[0], embeddings[1]) > 0.98, mode


def test_a_broken_exif_block_is_ignored_the_pixels_are_embedded(client):
    photo = Image.open(shared_photos("ukbench", 1)[0])
    broken = (  # a byte-order mark that is neither II nor MM: Pillow's EXIF parser raises SyntaxError
        b"Exif\x00\x00mI*\x00\x08\x00\x00\x00\x02\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00"
        b"i\x87\x04\x00\x01\x00\x00\x00&\x00\x00\x00"
    )
    for format in ("WEBP", "JPEG", "PNG"):
        data = encoded(photo, format, exif=broken)
        (embedding,) = client.embed([data], model=TINY)["embedding"]
        assert np.isfinite(embedding).all(), format


def exif_with_a_mistyped_entry() -> bytes:
    """A big-endian EXIF block: ImageWidth declared ASCII ("fuzz"; the tag is a number), orientation 6 (turned
    90 degrees). Re-writing it (ImageOps.exif_transpose) raised struct.error: it came back INTERNAL."""
    return (
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02"
        b"\x01\x00\x00\x02\x00\x00\x00\x05\x00\x00\x00\x26"  # 0x0100 ImageWidth, ASCII, 5 bytes at 38
        b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"  # 0x0112 Orientation, SHORT, 6
        b"\x00\x00\x00\x00fuzz\x00"
    )


def test_an_exif_entry_whose_type_does_not_match_its_tag_is_read_not_rewritten(client):
    photo = Image.open(shared_photos("ukbench", 1)[0]).convert("RGB").resize((160, 120))
    upright = client.embed([encoded(photo.transpose(Image.Transpose.ROTATE_270), "PNG")], model=TINY)["embedding"]
    for format in ("WEBP", "JPEG", "PNG"):
        data = encoded(photo, format, exif=exif_with_a_mistyped_entry())
        (embedding,) = client.embed([data], model=TINY)["embedding"]
        assert cosine(embedding, upright[0]) > 0.98, format  # the orientation was applied


def test_an_image_too_long_for_its_width_is_refused_before_it_is_resized(client):
    """A 4000x1 PNG is 92 bytes; resized to a shorter side of 256 it would be 1,024,000 x 256 pixels."""
    data = encoded(Image.new("L", (4000, 1)), "PNG")
    assert len(data) < 200
    code, details = status_of(lambda: client.embed([data], model=TINY))
    assert code == "INVALID_ARGUMENT" and "4000x1" in details and "crop it first" in details


def test_image_items_and_queries_over_the_image_limit_are_refused_before_decoding(tiny_server, client):
    name = f"images-{uuid.uuid4().hex[:8]}"
    client.create_collection(name, model=TINY)
    not_images = [b"not decoded"] * 65  # the server's limit is 64 images per request
    code, details = status_of(lambda: client.add(name, images=not_images))
    assert code == "INVALID_ARGUMENT" and "65 image items" in details and "limit of 64" in details
    code, details = status_of(lambda: client.search_batch(name, images=not_images, k=1))
    assert code == "INVALID_ARGUMENT" and "65 image queries" in details
    client.delete_collection(name)


def test_a_malformed_message_is_invalid_argument_and_counted(tiny_server, client):
    import urllib.request

    invalid_utf8_name = b"\x0a\x02\xff\xfe"  # field 1 (name), a string of 2 bytes that are not UTF-8
    create = client._channel.unary_unary(
        "/offshelf.v1.Index/CreateCollection", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    code, details = status_of(lambda: create(invalid_utf8_name, timeout=30))
    assert code == "INVALID_ARGUMENT" and "not a valid message" in details
    add_stream = client._channel.stream_unary(
        "/offshelf.v1.Index/AddStream", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    code, details = status_of(lambda: add_stream(iter([b"\x0a\x02\xff\xfe"]), timeout=30))
    assert code == "INVALID_ARGUMENT"
    text = urllib.request.urlopen(tiny_server.metrics_url, timeout=10).read().decode()
    assert 'offshelf_requests_total{code="INVALID_ARGUMENT",model="",rpc="CreateCollection"}' in text


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_concurrent_large_images_wait_for_the_decode_budget_instead_of_all_decoding_at_once(tiny_repo, tmp_path):
    """8 concurrent 4000x4000 PNGs of a few KB each: with a budget of one such image at a time they decode in turn,
    and the server's peak RSS grows by a fraction of what eight at once take (malloc's per-thread arenas keep some)."""
    import threading

    gradient = np.tile(np.arange(4000, dtype=np.uint8), (4000, 1))
    data = encoded(Image.fromarray(gradient).convert("RGB"), "PNG")
    assert len(data) < 200_000
    budget = {"max_image_pixels": 16_000_000, "max_decode_pixels": 16_000_000}
    server = ServerProcess(tiny_repo, tmp_path / "data", drain_seconds=0, **budget)
    try:
        server.wait_serving()
        with Client(server.address, timeout=120) as client:
            client.embed([data], model=TINY)  # one alone: what decoding one image costs
            one = peak_rss_mb(server.process.pid)
            results = []

            def embed():
                results.append(client.embed([data], model=TINY)["embedding"].shape)

            threads = [threading.Thread(target=embed) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            eight = peak_rss_mb(server.process.pid)
        print(f"peak RSS after one 4000x4000 PNG: {one:.0f} MB; after 8 concurrent: {eight:.0f} MB")
        assert results == [(1, 1280)] * 8
        assert eight - one < 500, (one, eight)  # without the budget: +1,236 MB here; with it +246 MB
    finally:
        server.kill()


def test_a_webp_counts_four_times_its_pixels_against_the_limits(tiny_repo, tmp_path):
    """A 2 KB lossless 7000x7000 WebP took +937 MB to decode (Pillow's WebP decoder holds four RGBA planes): it is
    refused; a 3500x3500 one, a quarter of the limit in pixels, costs what a 50-megapixel PNG would."""
    huge = encoded(Image.new("RGB", (7000, 7000)), "WEBP", lossless=True)
    large = encoded(Image.new("RGB", (3500, 3500), (90, 140, 200)), "WEBP", lossless=True)
    assert len(huge) < 5_000 and len(large) < 5_000
    server = ServerProcess(tiny_repo, tmp_path / "data", drain_seconds=0)  # the default limit: 50,000,000 pixels
    try:
        server.wait_serving()
        with Client(server.address, timeout=120) as client:
            client.embed([encoded(Image.new("RGB", (64, 64)), "PNG")], model=TINY)
            before = peak_rss_mb(server.process.pid)
            code, details = status_of(lambda: client.embed([huge], model=TINY))
            assert code == "INVALID_ARGUMENT" and "7000x7000" in details and "WebP" in details, details
            assert client.embed([large], model=TINY)["embedding"].shape == (1, 1280)
            growth = peak_rss_mb(server.process.pid) - before
        print(f"peak RSS growth for a 3500x3500 lossless WebP: {growth:.0f} MB")
        assert growth < 450, growth  # 7000x7000 took +937 MB
    finally:
        server.kill()
