"""What tests and benchmarks share: paths, photos, synthetic vectors, a tiny ONNX model, and a real server in a
subprocess. Tests get these through conftest.py's fixtures or import them; benchmarks import them."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np
import onnx
import pytest
from google.protobuf import json_format
from onnx import TensorProto, helper

from offshelf.clients import Client
from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc, model_card_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = pathlib.Path(os.environ.get("OFFSHELF_DATA", ROOT.parent / "shared" / "data"))


def skimage_photo(name: str) -> pathlib.Path:
    import skimage

    return pathlib.Path(skimage.__file__).parent / "data" / name


def shared_photos(folder: str, count: int) -> list[pathlib.Path]:
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} is absent: real photos come from ../shared/data (or set OFFSHELF_DATA)")
    return sorted(path.rglob("*.jpg"))[:count]


def clustered_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """Vectors near a 64-d subspace, in 50 clusters, plus isotropic noise: the shape of CNN embeddings."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((64, dim)).astype(np.float32)
    centres = 2 * rng.standard_normal((50, 64)).astype(np.float32)
    latent = centres[rng.integers(0, 50, count)] + rng.standard_normal((count, 64)).astype(np.float32)
    vectors = latent @ basis
    noise = rng.standard_normal((count, dim)).astype(np.float32)
    scale = 0.3 * float(np.linalg.norm(vectors, axis=1).mean()) / dim**0.5
    return (vectors + scale * noise).astype(np.float32)


def read_card(version_dir: pathlib.Path) -> model_card_pb2.ModelCard:
    return json_format.Parse((version_dir / "card.json").read_text(), model_card_pb2.ModelCard())


def small_preprocessing(size: int) -> model_card_pb2.Preprocessing:
    return model_card_pb2.Preprocessing(
        input_name="image",
        resize_shorter=size,
        crop_height=size,
        crop_width=size,
        interpolation="bilinear",
        channel_order="RGB",
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )


def random_checkpoint(path: pathlib.Path, architecture: str, size: int, seed: int = 0) -> pathlib.Path:
    """An ``offshelf train`` checkpoint of a randomly initialised zoo architecture whose preprocessing crops `size`
    pixels: training and export read it like any checkpoint, at a fraction of the cost of 224-pixel inputs."""
    import torch

    from offshelf.export.checkpoint import write_checkpoint
    from offshelf.export.zoo import build_network

    torch.manual_seed(seed)
    network = build_network(architecture, "random")
    write_checkpoint(path, architecture, network.module.state_dict(), network.class_names, small_preprocessing(size))
    return path


TINY_SIZE = 8  # input crop of the tiny model, pixels


def write_identity_model(repo: pathlib.Path, dim: int, version: int = 1, seed: int = 0) -> pathlib.Path:
    """repo/random-projection-<dim>/<version>: embedding = flatten(image) @ W (W fixed, random from `seed`), written
    whole under a hidden name, then renamed (a server watching the repository never sees half of it). Returns
    repo."""
    name = f"random-projection-{dim}"
    version_dir = repo / name / str(version)
    if (version_dir / "card.json").exists():
        return repo
    staged = repo / name / f".staging-{version}"
    staged.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(seed).standard_normal((3 * TINY_SIZE * TINY_SIZE, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["embedding"])],
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, TINY_SIZE, TINY_SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten().tolist())],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), staged / "model.onnx"
    )
    card = model_card_pb2.ModelCard(
        name=name,
        version=version,
        architecture="random-projection",
        preprocessing=model_card_pb2.Preprocessing(
            input_name="image",
            resize_shorter=TINY_SIZE,
            crop_height=TINY_SIZE,
            crop_width=TINY_SIZE,
            interpolation="bilinear",
            channel_order="RGB",
            mean=[0.5] * 3,
            std=[0.5] * 3,
        ),
        outputs=[model_card_pb2.OutputSpec(name="embedding", layer="projection", pooling="none", dim=dim)],
    )
    (staged / "card.json").write_text(json_format.MessageToJson(card, preserving_proto_field_name=True))
    staged.rename(version_dir)
    return repo


def write_whole_image_model(repo: pathlib.Path, mode: str = "no-crop", size: int = 48) -> pathlib.Path:
    """repo/mean-colour/1: embedding = (the image's mean colour) @ W, over any height and width: a model that keeps
    images whole (card mode no-crop or fit, S = size). Returns repo."""
    version_dir = repo / "mean-colour" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["embedding"]),
        ],
        "mean-colour",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten().tolist())],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), version_dir / "model.onnx"
    )
    card = model_card_pb2.ModelCard(
        name="mean-colour",
        version=1,
        architecture="mean-colour",
        preprocessing=model_card_pb2.Preprocessing(
            input_name="image",
            resize_shorter=size,
            interpolation="bilinear",
            channel_order="RGB",
            mean=[0.5] * 3,
            std=[0.5] * 3,
            mode=mode,
        ),
        outputs=[model_card_pb2.OutputSpec(name="embedding", layer="colour", pooling="avg", dim=8)],
    )
    (version_dir / "card.json").write_text(json_format.MessageToJson(card, preserving_proto_field_name=True))
    return repo


class ServerProcess:
    """``offshelf serve`` in a subprocess on 127.0.0.1 with free ports; its JSON log lines are collected."""

    def __init__(
        self,
        repo: pathlib.Path,
        data_dir: pathlib.Path,
        client: dict | None = None,
        environment: dict[str, str] | None = None,
        **settings: object,
    ):
        """client: the connection options (TLS files) wait_serving connects with; environment: more variables for
        the process (settings become OFFSHELF_* ones)."""
        self.client_options = client or {}
        self.data_dir = data_dir
        self.started_at = time.time()
        self.settings = settings
        settings = {"data_dir": data_dir, **settings}
        env = {**os.environ, **(environment or {}), **{f"OFFSHELF_{k.upper()}": str(v) for k, v in settings.items()}}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "offshelf.service.cli",
                "--repo",
                str(repo),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                "0",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.logs: list[dict] = []
        self.stray: list[str] = []  # stderr lines that are not JSON (gRPC core's, a crash's)
        self._listening = threading.Event()
        threading.Thread(target=self._read_logs, daemon=True).start()
        if not self._listening.wait(60):
            self.kill()
            raise RuntimeError(f"server did not start listening: {self.logs}")
        started = next(e for e in self.logs if e.get("message") == "listening")
        self.address = f"127.0.0.1:{started['grpc_port']}"
        self.metrics_url = f"http://127.0.0.1:{started['metrics_port']}/metrics"
        self.http_url = f"http://127.0.0.1:{started['http_port']}" if "http_port" in started else ""

    def _read_logs(self) -> None:
        for line in self.process.stderr:
            if line.startswith("{"):
                entry = json.loads(line)
                self.logs.append(entry)
                if entry.get("message") == "listening":
                    self._listening.set()
            else:
                self.stray.append(line)

    def wait_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=5, **self.client_options) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}: {self.logs}")
                try:
                    if client.health() == "SERVING":
                        return
                except Exception:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not SERVING after {timeout} s: {self.logs}")

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as err:
            last = [f"{e.get('logger')}: {e.get('message')}" for e in self.logs[-12:]]
            raise AssertionError(
                f"the server did not exit within {timeout} s of SIGTERM; its last lines: {last}"
            ) from err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def serving(repo: pathlib.Path, data_dir: pathlib.Path, **options: object) -> Iterator[ServerProcess]:
    """A ServerProcess (same options) once it answers SERVING; killed on the way out."""
    server = ServerProcess(repo, data_dir, **options)  # type: ignore[arg-type]
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


T = TypeVar("T")


def until(
    check: Callable[[], T], timeout: float = 60.0, what: str = "the condition", tolerate: tuple = (grpc.RpcError,)
) -> T:
    """The first true value check() returns, polled every 20 ms (an exception of a `tolerate` type counts as false);
    AssertionError naming `what` once `timeout` seconds have passed. The one polling helper of tests and benches."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except tolerate:
            pass
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# milvus-server checks each configured port with a bind without SO_REUSEADDR and silently moves to the next free port
# when it fails: right after a kill -9 the proxy port still has connections in TIME_WAIT (for 60 s), so a restarted
# Milvus listened elsewhere and every client got "connection refused". Milvus's own (Go) listeners reuse the address.
MILVUS_LAUNCHER = """
import socket, sys
import milvus

def try_bind_port(self, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None

milvus.MilvusServerConfig.try_bind_port = try_bind_port
sys.exit(milvus.main())
"""


class MilvusProcess:
    """The real Milvus standalone server (PyPI package ``milvus``) on free ports, its data under `data_dir`.

    Its embedded etcd ignores ``--etcd-port`` for listening (it would take 2379 and 2380), so an etcd config file
    names free ports too (Milvus reads ETCD_CONFIG_PATH). The time tick is 20 ms instead of 200 ms: a Strong read
    waits about two ticks. Stopping needs SIGKILL after a grace period."""

    PORT_FLAGS = (
        "etcd-port",
        "root-coord-port",
        "proxy-port",
        "proxy-internal-port",
        "query-coord-port",
        "query-node-port",
        "index-coord-port",
        "index-node-port",
        "data-coord-port",
        "data-node-port",
    )

    def __init__(self, data_dir: pathlib.Path, time_tick_ms: int = 20):
        ports = {flag: free_port() for flag in self.PORT_FLAGS}
        peer_port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        etcd = f"http://127.0.0.1:{ports['etcd-port']}"
        peer = f"http://127.0.0.1:{peer_port}"
        etcd_config = data_dir / "etcd.yaml"
        etcd_config.write_text(
            f"name: offshelf-tests\ndata-dir: {data_dir / 'etcd'}\nlisten-client-urls: {etcd}\n"
            f"advertise-client-urls: {etcd}\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: offshelf-tests={peer}\n"
        )
        command = [sys.executable, "-c", MILVUS_LAUNCHER, "--data", str(data_dir)]
        for flag, port in ports.items():
            command += [f"--{flag}", str(port)]
        command += ["--extra-config", f"proxy.timeTickInterval={time_tick_ms}"]
        self.command, self.etcd_config = command, etcd_config
        self.log = data_dir / "server.log"
        self.uri = f"http://127.0.0.1:{ports['proxy-port']}"
        self.etcd_uri = etcd
        self.start()

    def start(self) -> None:
        """Starts the server (again, after kill: the same ports and data)."""
        self.process = subprocess.Popen(
            self.command,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "ETCD_CONFIG_PATH": str(self.etcd_config)},
            start_new_session=True,  # its own process group: killed whole
        )

    def wait_ready(self, timeout: float = 120) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-server exited with {self.process.returncode}: see {self.log}")
            try:
                # dedicated: a shared client would be pymilvus's cached connection to the killed server
                client = MilvusClient(uri=self.uri, timeout=2, dedicated=True)
                try:
                    client.list_collections(timeout=2)
                finally:
                    client.close()
                return
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Milvus not ready after {timeout} s: see {self.log}")

    def kill(self) -> None:
        """SIGKILL to the whole group: Milvus and its embedded etcd vanish as in a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, grace: float = 5) -> None:
        """SIGTERM, then SIGKILL to the whole group after `grace` seconds (Milvus can hang on shutdown)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def sigterm_under_load(
    repo: pathlib.Path, data_dir: pathlib.Path, model: str, photos: list[bytes], clients: int = 8, **settings: object
) -> tuple[collections.Counter[str], float, int]:
    """Starts a server, sends it one-image Embed calls from `clients` threads without a pause, sends SIGTERM after a
    second and keeps calling until it has exited. Returns the status codes of the calls sent before it exited, the
    seconds from SIGTERM to exit, and the exit code. UNAVAILABLE is a refusal (retry elsewhere); any code but OK and
    UNAVAILABLE failed a call."""
    server = ServerProcess(repo, data_dir, **settings)
    codes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    exited = threading.Event()

    def call_until_exited(offset: int) -> None:
        with grpc.insecure_channel(server.address) as channel:
            embed = embedding_pb2_grpc.EmbeddingStub(channel).Embed
            i = offset
            while not exited.is_set():
                request = embedding_pb2.EmbedRequest(model=model, images=[photos[i % len(photos)]])
                try:
                    embed(request, timeout=60)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                with lock:
                    codes[code] += 1
                i += clients

    try:
        server.wait_serving()
        threads = [threading.Thread(target=call_until_exited, args=(c,)) for c in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(120)
        exit_seconds = time.monotonic() - signalled
        exited.set()
        for thread in threads:
            thread.join(120)
    finally:
        exited.set()
        server.kill()
    return codes, exit_seconds, exit_code
