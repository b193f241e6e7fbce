"""The real server (subprocess, 127.0.0.1) on the exported default model and real photos."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offshelf.clients import Client
from offshelf.protos.v1 import embedding_pb2

from common import shared_photos, skimage_photo

PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")  # the server uses CUDA where it really works


def scrape(server) -> dict[tuple[str, tuple], float]:
    """Every sample of the metrics endpoint: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_cat_photo_gets_an_imagenet_cat_class(client):
    arrays = client.embed([skimage_photo("chelsea.png")], outputs=["logits"])
    assert list(arrays) == ["logits"]
    assert arrays["logits"].shape == (1, 1000)
    assert 281 <= int(arrays["logits"][0].argmax()) <= 285


def test_embedding_is_the_1280_d_average_pool(client):
    arrays = client.embed([skimage_photo("coffee.png")])
    assert set(arrays) == {"logits", "embedding"}
    assert arrays["embedding"].shape == (1, 1280)
    assert arrays["embedding"].min() >= 0  # average of ReLU6 activations
    assert int(arrays["logits"][0].argmax()) == 967  # espresso


def test_one_image_alone_and_in_a_batch_of_8_gives_the_same_vector(client):
    photos = shared_photos("ukbench", 8)
    alone = client.embed([photos[3]], outputs=["embedding"])["embedding"][0]
    batch = client.embed(photos, outputs=["embedding"])["embedding"]
    assert batch.shape == (8, 1280)
    assert np.abs(batch[3] - alone).max() <= 1e-5
    assert np.abs(batch[0] - alone).max() > 1e-2  # other photos differ


def test_16_concurrent_clients_get_their_own_results_in_shared_batches(server):
    photos = shared_photos("ukbench", 16)
    with Client(server.address) as c:
        expected = [c.embed([p], outputs=["embedding"])["embedding"][0] for p in photos]
    before = scrape(server)

    def embed_alone(i: int) -> np.ndarray:
        with Client(server.address) as own:
            return own.embed([photos[i]] * 4, outputs=["embedding"])["embedding"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(embed_alone, range(16)))
    for i, result in enumerate(results):
        assert result.shape == (4, 1280)
        assert np.abs(result - expected[i]).max() <= 1e-5, f"client {i} got another image's vectors"
    after = scrape(server)
    model = (("model", "efficientnet-lite0/1"),)
    batches = after[("offshelf_batch_size_images_count", model)] - before[("offshelf_batch_size_images_count", model)]
    images = after[("offshelf_batch_size_images_sum", model)] - before[("offshelf_batch_size_images_sum", model)]
    assert images == 64
    assert batches < 16, f"64 images in {batches} batches: requests of 4 were not merged"


def test_list_models_describes_the_default(client):
    (info,) = client.list_models()
    assert info.name == "efficientnet-lite0"
    (version,) = info.versions
    assert version.version == 1
    assert (version.input_height, version.input_width) == (224, 224)
    assert version.execution_provider in PROVIDERS
    assert {o.name: o.dim for o in version.outputs} == {"logits": 1000, "embedding": 1280}
    assert list(version.outputs[0].labels)[285] == "Egyptian cat"


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.mark.parametrize(
    ("request_fields", "code", "hint"),
    [
        ({"images": [b"definitely not an image"]}, grpc.StatusCode.INVALID_ARGUMENT, "not a JPEG, PNG, WebP or GIF"),
        ({"images": [b""]}, grpc.StatusCode.INVALID_ARGUMENT, "image 0 is empty"),
        ({"images": []}, grpc.StatusCode.INVALID_ARGUMENT, "at least one encoded image"),
        ({"model": "resnet-nope"}, grpc.StatusCode.NOT_FOUND, "served models: efficientnet-lite0"),
        ({"version": 7}, grpc.StatusCode.NOT_FOUND, "served versions: 1"),
        ({"outputs": ["fc7"]}, grpc.StatusCode.INVALID_ARGUMENT, "its outputs are: logits, embedding"),
        ({"model": ""}, grpc.StatusCode.INVALID_ARGUMENT, "name a served model"),
        ({"images": "many"}, grpc.StatusCode.INVALID_ARGUMENT, "more than the limit of 32"),
    ],
)
def test_bad_input_gets_a_precise_status_and_the_server_keeps_serving(server, client, request_fields, code, hint):
    photo = skimage_photo("chelsea.png").read_bytes()
    fields = {"model": "efficientnet-lite0", "images": [photo], **request_fields}
    if fields["images"] == "many":
        fields["images"] = [photo] * 33
    stub = client.stubs["embedding"]
    got_code, details = _status(lambda: stub.Embed(embedding_pb2.EmbedRequest(**fields), timeout=30))
    assert got_code == code
    assert hint in details
    assert client.health() == "SERVING"
    assert client.embed([photo], outputs=["logits"])["logits"].shape == (1, 1000)


def test_a_truncated_jpeg_is_refused_and_a_bad_image_names_its_index(client):
    photo = shared_photos("ukbench", 1)[0].read_bytes()
    code, details = _status(lambda: client.embed([photo, photo[: len(photo) // 3]]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 1 could not be decoded" in details


def test_metrics_count_what_was_sent(server, client):
    photo = skimage_photo("coffee.png")
    before = scrape(server)
    for _ in range(3):
        client.embed([photo])
    _status(lambda: client.embed([b"junk"]))
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("offshelf_requests_total", rpc="Embed", code="OK", model="efficientnet-lite0") == 3
    assert delta("offshelf_requests_total", rpc="Embed", code="INVALID_ARGUMENT", model="efficientnet-lite0") == 1
    assert delta("offshelf_request_duration_seconds_count", rpc="Embed") == 4
    provider = client.list_models()[0].versions[0].execution_provider
    info = ("offshelf_model_info", (("model", "efficientnet-lite0"), ("provider", provider), ("version", "1")))
    assert after[info] == 1


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"offshelf.v1.Embedding", "grpc.health.v1.Health"} <= services
