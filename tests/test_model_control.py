"""Model control at run time (issue 16): version policies and serving.json, a repository watched while serving,
Triton's repository extension, ModelConfig and ModelStatistics, through our stubs and the stock tritonclient."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from offshelf.clients import Client
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc

from common import ROOT, ServerProcess, skimage_photo, until, write_identity_model

DIM = 16
MODEL = f"random-projection-{DIM}"
PHOTO = skimage_photo("coffee.png")


@pytest.fixture
def repo(tmp_path):
    return write_identity_model(tmp_path / "repo", DIM, version=1, seed=1)


def serve(repo, tmp_path, **settings) -> ServerProcess:
    server = ServerProcess(repo, tmp_path / "data", drain_seconds=0, repository_poll_seconds=0.2, **settings)
    server.wait_serving()
    return server


def states(server: ServerProcess, model: str = MODEL) -> dict[int, tuple[str, str]]:
    with grpc.insecure_channel(server.address) as channel:
        index = oip_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(oip.RepositoryIndexRequest(), timeout=10)
    return {int(m.version): (m.state, m.reason) for m in index.models if m.name == model}


def wait_for(server: ServerProcess, expected: dict[int, str], timeout: float = 30) -> None:
    """Until the model's versions are in these states (READY, UNAVAILABLE, ...)."""
    until(lambda: {v: state for v, (state, _) in states(server).items()} == expected, timeout, f"versions {expected}")


def embedding(client: Client, version: int = 0) -> np.ndarray:
    return client.embed([PHOTO], model=MODEL, version=version)["embedding"][0]


def retired(server: ServerProcess) -> set[str]:
    """The versions of which a copy has closed (unloaded, or replaced by a reload)."""
    return {str(e["version"]) for e in server.logs if e.get("message") == "model version retired"}


def loaded_versions(server: ServerProcess) -> set[str]:
    """The versions offshelf_model_info reports loaded."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return {
        sample.labels["version"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "offshelf_model_info" and sample.labels["model"] == MODEL and sample.value == 1
    }


def load_failures(server: ServerProcess) -> float:
    """offshelf_model_load_failures_total of the model."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "offshelf_model_load_failures_total" and sample.labels["model"] == MODEL
    )


def max_batch_size(server: ServerProcess) -> int:
    with grpc.insecure_channel(server.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelConfig(oip.ModelConfigRequest(name=MODEL), timeout=10).config.max_batch_size


class Callers:
    """Clients calling Embed in a loop, counting the answers by status code."""

    def __init__(self, client: Client, threads: int = 2):
        self.codes: Counter[str] = Counter()
        self._done = threading.Event()
        self._pool = ThreadPoolExecutor(threads)
        self._callers = [self._pool.submit(self._call, client) for _ in range(threads)]
        until(lambda: self.codes["OK"] > 0)

    def _call(self, client: Client) -> None:
        while not self._done.is_set():
            try:
                embedding(client)
                self.codes["OK"] += 1
            except grpc.RpcError as err:
                self.codes[err.code().name] += 1

    def watch(self, seconds: float = 1.0, calls: int = 100) -> None:
        """Returns after both `seconds` (several repository polls) and `calls` more answers."""
        target, started = self.codes.total() + calls, time.monotonic()
        until(lambda: self.codes.total() >= target and time.monotonic() - started >= seconds)

    def stop(self) -> Counter[str]:
        self._done.set()
        for caller in self._callers:
            caller.result()
        self._pool.shutdown()
        return self.codes


def write_serving_config(repo, config: dict) -> None:
    path = repo / MODEL / "serving.json"
    path.write_text(json.dumps(config))
    stamp = time.time_ns() + 1_000_000  # a rewrite within the file system's time granularity still shows as changed
    os.utime(path, ns=(stamp, stamp))


def test_a_new_version_takes_traffic_without_a_restart(repo, tmp_path):
    server = serve(repo, tmp_path)
    try:
        with Client(server.address) as client:
            first = embedding(client)
            write_identity_model(repo, DIM, version=2, seed=2)
            wait_for(server, {1: "UNAVAILABLE", 2: "READY"})  # the default policy serves the latest version
            assert states(server)[1][1] == "not picked by the model's version policy"
            second = embedding(client)
            assert not np.allclose(first, second)
            np.testing.assert_allclose(second, embedding(client, version=2), atol=1e-6)
            shutil.rmtree(repo / MODEL / "2")  # removed: the latest is version 1 again
            wait_for(server, {1: "READY"})
            np.testing.assert_allclose(embedding(client), first, atol=1e-6)
    finally:
        server.terminate()


def test_serving_json_picks_the_versions_and_the_settings(repo, tmp_path):
    write_identity_model(repo, DIM, version=2, seed=2)
    write_serving_config(repo, {"version_policy": {"all": True}, "max_batch_size": 4, "eager_batching": False})
    server = serve(repo, tmp_path)
    try:
        wait_for(server, {1: "READY", 2: "READY"})
        with grpc.insecure_channel(server.address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            config = stub.ModelConfig(oip.ModelConfigRequest(name=MODEL, version="1"), timeout=10).config
            assert (config.max_batch_size, config.version_policy.WhichOneof("policy_choice")) == (4, "all")
            assert config.parameters["eager_batching"].string_value == "False"
            write_serving_config(repo, {"version_policy": {"specific": [1]}})
            wait_for(server, {1: "READY", 2: "UNAVAILABLE"})
            config = stub.ModelConfig(oip.ModelConfigRequest(name=MODEL), timeout=10).config
            assert (config.max_batch_size, list(config.version_policy.specific.versions)) == (16, [1])
            until(lambda: retired(server) >= {"1", "2"})  # the copies replaced have closed
            assert loaded_versions(server) == {"1"}  # version 1 was reloaded: its gauge stays
            write_serving_config(repo, {"max_batch_size": 0, "batch": 8})  # a broken file: version 1 serves on
            until(lambda: "serving.json" in states(server)[2][1], 30, "the broken serving.json reported")
            reason = states(server)[2][1]
            assert "max_batch_size" in reason and "batch: Extra inputs are not permitted" in reason, reason
            assert states(server)[1][0] == "READY"
            with Client(server.address) as client:
                assert embedding(client).shape == (DIM,)
    finally:
        server.terminate()


def test_a_collection_keeps_the_version_it_was_built_on(repo, tmp_path):
    server = serve(repo, tmp_path)
    try:
        with Client(server.address) as client:
            client.create_collection("photos", model=MODEL)
            client.add("photos", images=[PHOTO], ids=["coffee"])
            write_identity_model(repo, DIM, version=2, seed=2)
            wait_for(server, {1: "READY", 2: "READY"})  # version 1 stays: the collection was built on it
            assert client.search("photos", image=PHOTO, k=1)[0].id == "coffee"
    finally:
        server.terminate()


def test_unloading_lets_the_requests_in_flight_finish(repo, tmp_path):
    server = serve(repo, tmp_path)
    try:
        with Client(server.address) as client, grpc.insecure_channel(server.address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            codes: set[str] = set()
            done = threading.Event()

            def embed_until_done(_: int) -> None:
                while not done.is_set():
                    try:
                        embedding(client)
                        codes.add("OK")
                    except grpc.RpcError as err:
                        codes.add(err.code().name)

            with ThreadPoolExecutor(4) as pool:
                callers = [pool.submit(embed_until_done, i) for i in range(4)]
                until(lambda: "OK" in codes)  # calls are going on
                stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name=MODEL), timeout=10)
                until(lambda: "UNAVAILABLE" in codes)  # the calls after it are refused
                done.set()
                for caller in callers:
                    caller.result()
            assert codes == {"OK", "UNAVAILABLE"}, codes  # the calls in flight finished: none failed otherwise
            wait_for(server, {1: "UNAVAILABLE"})
            assert states(server)[1][1] == "unloaded"
            time.sleep(0.5)  # polling does not bring an unloaded model back
            assert states(server)[1][1] == "unloaded"
            stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=MODEL), timeout=60)
            assert embedding(client).shape == (DIM,)
            (repo / "empty-model").mkdir()  # a model folder without versions does not load
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="empty-model"), timeout=60)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "has no version folder its version policy picks (versions there: none)" in refused.value.details()
    finally:
        server.terminate()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stock_tritonclient_controls_models(repo, tmp_path, tritonclient_python, protocol):
    server = serve(repo, tmp_path, http_port=0)
    script = ROOT / "tests" / "scripts" / "tritonclient_control.py"
    address = server.http_url.removeprefix("http://") if protocol == "http" else server.address
    try:
        run = subprocess.run(
            [tritonclient_python, str(script), protocol, address, MODEL, str(PHOTO)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert {"model_repository", "model_configuration", "statistics"} <= set(seen["extensions"])
    assert seen["index"] == [{"name": MODEL, "version": "1", "state": "READY"}]
    config = seen["config"]
    assert (config["name"], config["platform"], config["max_batch_size"]) == (MODEL, "onnxruntime_onnx", 16)
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [
        ("image", "TYPE_FP32"),
        ("encoded", "TYPE_STRING"),
        ("pixels", "TYPE_UINT8"),
    ]
    assert config["output"] == [{"name": "embedding", "data_type": "TYPE_FP32", "dims": [str(DIM)]}]
    assert [(i["name"], i["datatype"]) for i in seen["metadata"]["inputs"]] == [  # unique names
        ("image", "FP32"),
        ("encoded", "BYTES"),
        ("pixels", "UINT8"),
    ]
    assert seen["bytes_input"] == ["encoded"]
    new_name, old_name = seen["embeddings"]  # encoded images under the new name, and under the old one
    np.testing.assert_allclose(new_name, old_name)
    (stats,) = seen["statistics"]
    assert (stats["name"], stats["version"], stats["inference_count"]) == (MODEL, "1", "2")
    assert stats["inference_stats"]["success"]["count"] == "1"
    assert int(stats["inference_stats"]["compute_infer"]["ns"]) > 0
    assert seen["ready_after_unload"] is False
    (after_unload,) = seen["index_after_unload"]  # UNLOADING while its requests in flight finish
    assert after_unload in [
        {"name": MODEL, "version": "1", "state": "UNLOADING"},
        {"name": MODEL, "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]
    assert seen["infer_after_unload"] == "StatusCode.UNAVAILABLE"
    assert seen["ready_after_load"] is True
    assert seen["load_unknown"] == "StatusCode.NOT_FOUND"
    specific = {"specific": {"versions": ["1"]}}
    assert seen["overridden"] == {"max_batch_size": 4, "instances": 1, "version_policy": specific, "delay_us": "3000"}
    refused = seen["refused"]
    assert refused["zero_batch"].startswith(
        "StatusCode.INVALID_ARGUMENT: config override: max_batch_size: Input should be greater than or equal to 1"
    ), refused
    assert refused["inputs"].startswith(
        "StatusCode.INVALID_ARGUMENT: config override sets input, which offshelf "
        "does not take from it (inputs and outputs come from the model card)"
    ), refused
    assert (
        refused["two_groups"]
        == "StatusCode.INVALID_ARGUMENT: config override: offshelf serves one instance_group, not 2"
    )
    assert refused["files"].startswith("StatusCode.INVALID_ARGUMENT: file: parameters"), refused
    assert seen["after_refusals"] == seen["overridden"]  # a refused override changes nothing
    assert seen["after_plain_load"] == seen["initial"]  # loaded without a config: serving.json's settings again
    assert seen["initial"]["max_batch_size"] == 16


def test_every_valid_serving_json_is_applied_by_polling(repo, tmp_path):
    server = serve(repo, tmp_path)
    try:
        write_serving_config(repo, {"instances": 0})  # refused: version 1 serves on
        until(lambda: "instances" in states(server)[1][1])
        assert states(server)[1][0] == "READY"
        write_serving_config(repo, {"max_batch_size": 4})  # valid again: applied
        until(lambda: max_batch_size(server) == 4, timeout=30)
        write_serving_config(repo, {"version_policy": {"specific": [9]}})  # picks no version: the model leaves
        wait_for(server, {1: "UNAVAILABLE"})
        (repo / MODEL / "serving.json").unlink()  # the defaults pick version 1 again
        wait_for(server, {1: "READY"})
        with Client(server.address) as client:
            assert embedding(client).shape == (DIM,)
        assert max_batch_size(server) == 16
    finally:
        server.terminate()


def test_a_new_version_takes_over_without_an_outage(repo, tmp_path):
    staged = write_identity_model(tmp_path / "staged", DIM, version=2, seed=2) / MODEL / "2"
    server = serve(repo, tmp_path)
    try:
        with Client(server.address) as client:
            callers = Callers(client)
            (repo / MODEL / "2").mkdir()  # copied file by file: incomplete until card.json arrives
            shutil.copy(staged / "model.onnx", repo / MODEL / "2")
            callers.watch()
            assert states(server) == {
                1: ("READY", ""),
                2: (
                    "UNAVAILABLE",
                    "incomplete: no card.json yet (a version is considered once model.onnx and "
                    "card.json are both in place)",
                ),
            }
            shutil.copy(staged / "card.json", repo / MODEL / "2")
            wait_for(server, {1: "UNAVAILABLE", 2: "READY"})
            corrupt = repo / MODEL / ".staging-3"  # a complete version 3 that cannot load
            corrupt.mkdir()
            (corrupt / "model.onnx").write_bytes(b"not an ONNX graph")
            shutil.copy(staged / "card.json", corrupt)
            corrupt.rename(repo / MODEL / "3")
            until(lambda: states(server).get(3, ("", ""))[1].startswith("failed to load"))
            callers.watch()
            assert {v: state for v, (state, _) in states(server).items()} == {
                1: "UNAVAILABLE",
                2: "READY",
                3: "UNAVAILABLE",
            }
            np.testing.assert_allclose(embedding(client), embedding(client, version=2), atol=1e-6)
            codes = callers.stop()
        assert set(codes) == {"OK"}, codes  # no call was refused while the versions changed
        assert load_failures(server) == 1
        logged = [e for e in server.logs if e.get("message") == "model version not loaded"]
        assert [e["versions"] for e in logged] == [[3]]  # once, though polled again and again
    finally:
        server.terminate()


def test_links_out_of_the_repository_are_refused_unless_allowed(repo, tmp_path):
    outside = write_identity_model(tmp_path / "outside", DIM, version=1, seed=3) / MODEL
    (repo / MODEL / "2").symlink_to(outside / "1")  # a version folder
    (repo / "linked").symlink_to(outside)  # a model folder
    server = serve(repo, tmp_path)
    try:
        refused = "links outside the repository"
        versions = states(server)
        assert versions[1] == ("READY", "") and versions[2][0] == "UNAVAILABLE", versions
        assert refused in versions[2][1] and "--allow-links-outside-repo" in versions[2][1], versions
        (linked,) = states(server, "linked").values()
        assert linked[0] == "UNAVAILABLE" and refused in linked[1], linked
        with grpc.insecure_channel(server.address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as load:
                stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="linked"), timeout=60)
        assert load.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused in load.value.details(), load.value.details()
        (tmp_path / "outside.json").write_text("{}")
        (repo / MODEL / "serving.json").symlink_to(tmp_path / "outside.json")
        until(lambda: any(e.get("message") == "serving.json refused" for e in server.logs))
        assert refused in next(e for e in server.logs if e.get("message") == "serving.json refused")["error"]
    finally:
        server.terminate()
    server = serve(repo, tmp_path, allow_links_outside_repo=True)
    try:
        wait_for(server, {1: "UNAVAILABLE", 2: "READY"})
        assert [state for state, _ in states(server, "linked").values()] == ["READY"]
    finally:
        server.terminate()
