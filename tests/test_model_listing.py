"""What `offshelf models`, ListModels and ModelMetadata say about a model (issue 23, item 18): a model that keeps
images whole shows its rule, not 0x0; and the server's log does not start with FAISS's loader lines. (A model
exported with random weights: test_export.py, on a real export.)"""

from __future__ import annotations

import json
import subprocess
import sys

import grpc

from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from offshelf.protos.v1 import model_card_pb2
from offshelf.service.models.card_facts import input_text

from common import ServerProcess, write_identity_model, write_whole_image_model


def offshelf_models(address: str, *options: str) -> str:
    command = [sys.executable, "-m", "offshelf.clients.cli", "models", "--server", address, *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_whole_image_model_shows_its_rule_and_faiss_logs_nothing_at_info(tmp_path):
    repo = write_whole_image_model(write_identity_model(tmp_path / "repo", 16), "no-crop", 48)
    server = ServerProcess(repo, tmp_path / "data", drain_seconds=0)
    try:
        server.wait_serving()
        text = offshelf_models(server.address)
        assert "mean-colour v1  mean-colour  whole image, shorter side 48  " in text
        assert "random-projection-16 v1  random-projection  8x8  " in text and "0x0" not in text
        assert "random init" not in text  # neither was exported with random weights
        shown = {m["name"]: m["versions"][0] for m in json.loads(offshelf_models(server.address, "--json"))}
        assert shown["mean-colour"]["input"] == "whole image, shorter side 48"
        assert shown["random-projection-16"]["input"] == "8x8" and shown["mean-colour"]["random_init"] is False
        with grpc.insecure_channel(server.address) as channel:
            metadata = oip_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                oip.ModelMetadataRequest(name="mean-colour")
            )
        assert metadata.parameters["input"].string_param == "whole image, shorter side 48"
        assert metadata.parameters["random_init"].bool_param is False
        assert not [line for line in server.logs if line["logger"].startswith("faiss")]
    finally:
        server.kill()


def test_the_input_of_a_model_that_fits_images_is_its_longer_side():
    spec = model_card_pb2.Preprocessing(mode="fit", resize_shorter=320)
    assert input_text(spec) == "whole image, longer side 320"
