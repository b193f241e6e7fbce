"""Models that keep images whole (issue 17): a card with preprocessing mode no-crop, served with images of any size
batched by shape, through Embed and the Open Inference Protocol."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from offshelf.clients import Client, InvalidArgument
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from offshelf.service.models.loaded_model import read_card
from offshelf.service.models.preprocess import Preprocessor

from common import ServerProcess, skimage_photo, write_whole_image_model

MODEL = "mean-colour"


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    repo = write_whole_image_model(tmp_path_factory.mktemp("whole") / "repo")
    server = ServerProcess(repo, tmp_path_factory.mktemp("whole-data"), drain_seconds=0)
    server.wait_serving()
    yield server, repo
    server.terminate()


def test_images_of_any_size_in_one_call_are_each_embedded_whole(whole):
    server, repo = whole
    photos = [skimage_photo(name).read_bytes() for name in ("coffee.png", "rocket.jpg", "astronaut.png")]
    with Client(server.address) as client:
        together = client.embed(photos, model=MODEL)["embedding"]
        alone = np.concatenate([client.embed([photo], model=MODEL)["embedding"] for photo in photos])
        flipped = client.embed(photos[:1], model=MODEL, augmentation="flip")["embedding"]
        with pytest.raises(InvalidArgument, match="ten crops need a model that crops its input"):
            client.embed(photos[:1], model=MODEL, augmentation="10crop")
    np.testing.assert_allclose(together, alone, atol=1e-6)  # grouped by shape, put back in order
    np.testing.assert_allclose(flipped, together[:1], atol=1e-4)  # a mean colour does not change when mirrored
    preprocessor = Preprocessor(read_card(repo / MODEL / "1").preprocessing, 10**8)
    sizes = {preprocessor.views_of(photo, "p", 0)[0].shape for photo in photos}
    assert len(sizes) == 3 and all(min(h, w) == 48 for h, w, _ in sizes)  # three shapes, each the shorter side S


def test_a_whole_image_tensor_goes_through_the_protocol_at_its_own_size(whole):
    server, repo = whole
    preprocessor = Preprocessor(read_card(repo / MODEL / "1").preprocessing, 10**8)
    photo = skimage_photo("coffee.png").read_bytes()
    tensor = preprocessor.normalise(preprocessor.views_of(photo, "p", 0)[0])[None]
    with grpc.insecure_channel(server.address) as channel, Client(server.address) as client:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)

        def infer(array: np.ndarray) -> np.ndarray:
            request = oip.ModelInferRequest(model_name=MODEL)
            request.inputs.add(name="image", datatype="FP32", shape=list(array.shape))
            request.raw_input_contents.append(array.astype("<f4").tobytes())
            response = stub.ModelInfer(request, timeout=30)
            return np.frombuffer(response.raw_output_contents[0], "<f4")

        np.testing.assert_allclose(infer(tensor), client.embed([photo], model=MODEL)["embedding"][0], atol=1e-5)
        with pytest.raises(grpc.RpcError) as refused:
            infer(tensor[:, :, :40, :])  # its shorter side is not S
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[N, 3, H, W] with H x W the shorter side 48" in refused.value.details()
        metadata = stub.ModelMetadata(oip.ModelMetadataRequest(name=MODEL), timeout=10)
        assert list(metadata.inputs[0].shape) == [-1, 3, -1, -1]
