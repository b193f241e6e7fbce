"""The Open Inference Protocol (KServe v2) endpoint: our stubs for every case, and the stock tritonclient
in a process of its own."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from offshelf.clients import Client
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from offshelf.service.api.oip import deserialize_bytes, serialize_bytes
from offshelf.service.models.loaded_model import read_card
from offshelf.service.models.preprocess import Preprocessor

from common import ROOT, ServerProcess, shared_photos, skimage_photo

MODEL = "efficientnet-lite0"
PHOTOS = [skimage_photo(n) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]


@pytest.fixture
def stub(server: ServerProcess):
    with grpc.insecure_channel(server.address) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def bytes_request(photos, outputs=(), model=MODEL, **parameters) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, id="req-1")
    request.inputs.add(name="image", datatype="BYTES", shape=[len(photos)])
    request.raw_input_contents.append(serialize_bytes([p.read_bytes() for p in photos]))
    for name in outputs:
        request.outputs.add(name=name)
    for key, value in parameters.items():
        field = "string_param" if isinstance(value, str) else "int64_param"
        setattr(request.parameters[key], field, value)
    return request


def preprocessed(model_repo, photos) -> np.ndarray:
    pre = Preprocessor(read_card(model_repo / MODEL / "1").preprocessing, 10**8)
    return np.stack([pre(p.read_bytes()) for p in photos])


def output(response: oip.ModelInferResponse, name: str) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    raw = response.raw_output_contents[index]
    if tensor.datatype == "BYTES":
        return np.array([b.decode() for b in deserialize_bytes(raw, name)]).reshape(tensor.shape)
    return np.frombuffer(raw, "<f4").reshape(tensor.shape)


def test_liveness_readiness_and_metadata(stub):
    assert stub.ServerLive(oip.ServerLiveRequest()).live
    assert stub.ServerReady(oip.ServerReadyRequest()).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name=MODEL)).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name=MODEL, version="1")).ready
    assert not stub.ModelReady(oip.ModelReadyRequest(name=MODEL, version="7")).ready
    assert not stub.ModelReady(oip.ModelReadyRequest(name="no-such-model")).ready
    assert stub.ServerMetadata(oip.ServerMetadataRequest()).name == "offshelf"
    metadata = stub.ModelMetadata(oip.ModelMetadataRequest(name=MODEL))
    assert (metadata.name, list(metadata.versions), metadata.platform) == (MODEL, ["1"], "onnxruntime_onnx")
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [  # a request sends one of them
        ("image", "FP32", [-1, 3, 224, 224]),
        ("encoded", "BYTES", [-1, 1]),  # unique names: Triton clients index inputs by name
        ("pixels", "UINT8", [-1, 224, 224, 3]),
    ]
    outputs = {o.name: list(o.shape) for o in metadata.outputs}
    assert outputs["logits"] == [-1, 1000] and outputs["embedding"] == [-1, 1280]


def test_encoded_and_preprocessed_inputs_give_the_vectors_embed_gives(stub, client, model_repo):
    expected = client.embed(PHOTOS)
    response = stub.ModelInfer(bytes_request(PHOTOS))
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "req-1")
    assert [o.name for o in response.outputs] == ["logits", "embedding"]
    assert [o.datatype for o in response.outputs] == ["FP32", "FP32"]
    for name in ("logits", "embedding"):
        np.testing.assert_allclose(output(response, name), expected[name], atol=1e-5)

    tensor = preprocessed(model_repo, PHOTOS)
    request = oip.ModelInferRequest(model_name=MODEL, model_version="1")
    request.inputs.add(name="image", datatype="FP32", shape=list(tensor.shape))
    request.raw_input_contents.append(tensor.astype("<f4").tobytes())
    request.outputs.add(name="embedding")
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["embedding"]
    np.testing.assert_allclose(output(response, "embedding"), expected["embedding"], atol=1e-5)

    pre = Preprocessor(read_card(model_repo / MODEL / "1").preprocessing, 10**8)
    crops = np.stack([pre.views(pre.decode(p.read_bytes()), 0)[0] for p in PHOTOS])  # decoded uint8 RGB crops
    request = oip.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="pixels", datatype="UINT8", shape=list(crops.shape))
    request.raw_input_contents.append(crops.tobytes())
    np.testing.assert_allclose(output(stub.ModelInfer(request), "embedding"), expected["embedding"], atol=1e-5)
    typed_pixels = oip.ModelInferRequest(model_name=MODEL)  # the protocol's typed field for UINT8: uint_contents
    typed_pixels.inputs.add(name="pixels", datatype="UINT8", shape=[1, *crops.shape[1:]]).contents.uint_contents.extend(
        crops[0].ravel().tolist()
    )
    np.testing.assert_allclose(
        output(stub.ModelInfer(typed_pixels), "embedding")[0], expected["embedding"][0], atol=1e-5
    )

    typed = oip.ModelInferRequest(model_name=MODEL)  # contents in the typed field instead of raw bytes
    typed.inputs.add(name="image", datatype="FP32", shape=[1, 3, 224, 224]).contents.fp32_contents.extend(
        tensor[0].ravel().tolist()
    )
    np.testing.assert_allclose(output(stub.ModelInfer(typed), "embedding")[0], expected["embedding"][0], atol=1e-5)

    flipped = output(stub.ModelInfer(bytes_request(PHOTOS[:1], augmentation="flip")), "embedding")
    np.testing.assert_allclose(flipped, client.embed(PHOTOS[:1], augmentation="flip")["embedding"], atol=1e-5)


def test_head_outputs_match_classify(stub, client):
    photos = [p for cls in ("ants", "bees") for p in shared_photos(f"hymenoptera/train/{cls}", 8)]
    client.train_head("oip-bugs", "ncm", images=photos, labels=[p.parent.name for p in photos])
    client.wait_for_head("oip-bugs")
    metadata = stub.ModelMetadata(oip.ModelMetadataRequest(name=MODEL))
    assert {"oip-bugs/probabilities", "oip-bugs/labels"} <= {o.name for o in metadata.outputs}
    queries = [p for cls in ("ants", "bees") for p in shared_photos(f"hymenoptera/val/{cls}", 2)]
    response = stub.ModelInfer(bytes_request(queries, ["oip-bugs/labels", "oip-bugs/probabilities"], top_k=2))
    labels, probabilities = output(response, "oip-bugs/labels"), output(response, "oip-bugs/probabilities")
    assert labels.shape == (4, 2) and probabilities.shape == (4, 2)
    tops = client.classify(queries, "oip-bugs", k=2)
    for row_labels, row_probabilities, top in zip(labels, probabilities, tops, strict=True):
        assert list(row_labels) == [label for label, _ in top]
        assert sorted(row_probabilities, reverse=True) == pytest.approx([p for _, p in top], abs=1e-6)


def test_stream_infer_answers_each_request_in_order(stub, client):
    bad = bytes_request(PHOTOS[:1])
    bad.model_name = "no-such-model"
    responses = list(stub.ModelStreamInfer(iter([bytes_request(PHOTOS[:1]), bad, bytes_request(PHOTOS[1:2])])))
    assert [r.error_message.split(":")[0] for r in responses] == ["", "NOT_FOUND", ""]
    expected = client.embed(PHOTOS[:2])["embedding"]
    np.testing.assert_allclose(output(responses[0].infer_response, "embedding")[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(output(responses[2].infer_response, "embedding")[0], expected[1], atol=1e-5)


def test_bad_requests_get_precise_codes(stub):
    def code_and_message(request):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        return caught.value.code(), caught.value.details()

    def altered(change):
        request = bytes_request(PHOTOS[:1])
        change(request)
        return code_and_message(request)

    def set_model(name):
        return lambda r: setattr(r, "model_name", name)

    assert altered(set_model("no-such-model"))[0] == grpc.StatusCode.NOT_FOUND
    assert altered(set_model(""))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert altered(lambda r: setattr(r, "model_version", "latest"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert altered(lambda r: setattr(r, "model_version", "9"))[0] == grpc.StatusCode.NOT_FOUND
    code, message = altered(lambda r: r.outputs.add(name="pool5"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "pool5" in message
    code, message = altered(lambda r: r.outputs.add(name="no-such-head/labels"))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-head" in message
    code, message = altered(lambda r: setattr(r.inputs[0], "name", "pixels"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'image'" in message and "UINT8" in message
    code, message = altered(lambda r: setattr(r.inputs[0], "datatype", "INT8"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "INT8" in message
    code, message = altered(lambda r: r.inputs[0].shape.__setitem__(0, 2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "2 images" in message
    code, message = altered(lambda r: r.parameters["colour"].string_param.__class__)  # touching creates it
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "colour" in message
    code, message = altered(lambda r: setattr(r.parameters["augmentation"], "string_param", "rotate"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "rotate" in message
    code, message = altered(lambda r: r.raw_input_contents.__setitem__(0, serialize_bytes([b"not an image"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "image[0]" in message
    code, message = altered(lambda r: r.raw_input_contents.__setitem__(0, b"\xff\xff\x00\x00abc"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "BYTES" in message

    def fp32(shape, raw_length):
        request = oip.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="image", datatype="FP32", shape=shape)
        request.raw_input_contents.append(b"\0" * raw_length)
        return code_and_message(request)

    code, message = fp32([1, 3, 100, 100], 4 * 3 * 100 * 100)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "[N, 3, 224, 224]" in message
    code, message = fp32([1, 3, 224, 224], 12)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "602112 bytes" in message
    code, message = fp32([1, 3, 224, 224], 0)  # NaN check comes after the size check: all-zero is fine
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    pixels = oip.ModelInferRequest(model_name=MODEL)
    pixels.inputs.add(name="pixels", datatype="UINT8", shape=[1, 3, 224, 224])
    pixels.raw_input_contents.append(b"\0" * 3 * 224 * 224)
    code, message = code_and_message(pixels)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "[N, 224, 224, 3]" in message
    too_bright = oip.ModelInferRequest(model_name=MODEL)
    too_bright.inputs.add(name="pixels", datatype="UINT8", shape=[1, 224, 224, 3]).contents.uint_contents.extend(
        [256] * 3 * 224 * 224
    )
    code, message = code_and_message(too_bright)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "above 255" in message
    nan = oip.ModelInferRequest(model_name=MODEL)
    nan.inputs.add(name="image", datatype="FP32", shape=[1, 3, 224, 224])
    nan.raw_input_contents.append(np.full((1, 3, 224, 224), np.nan, "<f4").tobytes())
    code, message = code_and_message(nan)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in message


def test_infer_and_embed_requests_are_batched_together(tiny_repo, tmp_path):
    tiny = "random-projection-1280"
    # A batch of two waits up to 30 s to fill: the two requests below meet in it on any machine.
    server = ServerProcess(
        tiny_repo, tmp_path, max_batch_size=2, max_batch_delay_ms=30_000, eager_batching=False, drain_seconds=0
    )
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel, Client(server.address) as client:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            with ThreadPoolExecutor(1) as pool:
                infer = pool.submit(stub.ModelInfer, bytes_request(PHOTOS[:1], model=tiny))
                client.embed(PHOTOS[1:2], model=tiny)  # fills the batch of two
                assert infer.result().outputs
        text = urllib.request.urlopen(server.metrics_url).read().decode()
        sizes = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("offshelf_batch_size_images_count", "offshelf_batch_size_images_sum")) and tiny in line
        }
        assert sizes == {"offshelf_batch_size_images_count": 1.0, "offshelf_batch_size_images_sum": 2.0}
    finally:
        server.kill()


def stock_tritonclient(python: str, protocol: str, address: str, tensor: np.ndarray, folder) -> dict:
    """What tests/scripts/tritonclient_check.py saw through the stock tritonclient (grpc or http)."""
    np.save(folder / "preprocessed.npy", tensor)
    script = ROOT / "tests" / "scripts" / "tritonclient_check.py"
    run = subprocess.run(
        [python, str(script), protocol, address, MODEL, str(folder / "preprocessed.npy"), *map(str, PHOTOS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_stock_tritonclient_works_unchanged(server, client, model_repo, tmp_path, tritonclient_python):
    seen = stock_tritonclient(tritonclient_python, "grpc", server.address, preprocessed(model_repo, PHOTOS), tmp_path)
    assert (seen["live"], seen["ready"], seen["model_ready"], seen["unknown_model_ready"]) == (True, True, True, False)
    assert seen["metadata"]["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}
    expected = client.embed(PHOTOS)["embedding"]
    np.testing.assert_allclose(seen["bytes_embedding"], expected, atol=1e-5)
    np.testing.assert_allclose(seen["fp32_embedding"], expected, atol=1e-5)
    assert seen["fp32_logits_shape"] == [3, 1000]
    assert seen["unknown_model"] == "StatusCode.NOT_FOUND"
