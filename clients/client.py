"""Python SDK: ``Client("host:port").embed(images, model=..., outputs=...)``."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

ImageSource = str | os.PathLike[str] | bytes
DEFAULT_MODEL = "efficientnet-lite0"
MAX_MESSAGE_BYTES = 64 << 20


def read_image(image: ImageSource) -> bytes:
    return image if isinstance(image, bytes) else pathlib.Path(image).read_bytes()


class Client:
    """A connection to an offshelf server. Calls raise grpc.RpcError with the server's status and message."""

    def __init__(self, address: str, timeout: float = 30.0):
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._embedding = embedding_pb2_grpc.EmbeddingStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def embed(
        self, images: Iterable[ImageSource], model: str = DEFAULT_MODEL, outputs: Iterable[str] = (), version: int = 0
    ) -> dict[str, np.ndarray]:
        """Output name -> float32 array of shape (number of images, dim); all outputs when none are named."""
        request = embedding_pb2.EmbedRequest(
            model=model, version=version, outputs=list(outputs), images=[read_image(i) for i in images]
        )
        response = self._embedding.Embed(request, timeout=self.timeout)
        names = list(response.results[0].outputs) if response.results else []
        return {name: np.array([r.outputs[name].values for r in response.results], dtype=np.float32) for name in names}

    def list_models(self) -> list[embedding_pb2.ModelInfo]:
        return list(self._embedding.ListModels(embedding_pb2.ListModelsRequest(), timeout=self.timeout).models)

    def health(self, service: str = "") -> str:
        """The health status name: SERVING, NOT_SERVING, ..."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
