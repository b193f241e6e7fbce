"""The offshelf.v1.Embedding servicer."""

from __future__ import annotations

import grpc

from offshelf.protos.v1 import embedding_pb2 as pb2
from offshelf.protos.v1 import embedding_pb2_grpc as pb2_grpc
from offshelf.service.api.checks import check_image_count
from offshelf.service.errors import InvalidArgument
from offshelf.service.models.card_facts import input_text, random_init
from offshelf.service.models.loaded_model import LoadedModel
from offshelf.service.models.registry import ModelRegistry


class EmbeddingServicer(pb2_grpc.EmbeddingServicer):
    def __init__(self, registry: ModelRegistry, max_images_per_request: int):
        self.registry = registry
        self.max_images = max_images_per_request

    def Embed(self, request: pb2.EmbedRequest, context: grpc.ServicerContext) -> pb2.EmbedResponse:
        if not request.model:
            raise InvalidArgument("model is empty: name a served model (ListModels lists them)")
        check_image_count(len(request.images), self.max_images)
        if request.version < 0:
            raise InvalidArgument(f"version {request.version} is negative; use 0 for the latest")
        model = self.registry.get(request.model, request.version)
        outputs = model.check_outputs(list(request.outputs))
        arrays = model.embed(list(request.images), request.augmentation)
        results = [
            pb2.ImageEmbeddings(
                outputs={
                    name: pb2.Vector(values=arrays[name][i].tolist(), dim=arrays[name].shape[1]) for name in outputs
                }
            )
            for i in range(len(request.images))
        ]
        return pb2.EmbedResponse(model=model.name, version=model.version, results=results)

    def ListModels(self, request: pb2.ListModelsRequest, context: grpc.ServicerContext) -> pb2.ListModelsResponse:
        return pb2.ListModelsResponse(
            models=[
                pb2.ModelInfo(name=name, versions=[_version_info(m) for m in versions])
                for name, versions in self.registry.all().items()
            ]
        )


def _version_info(model: LoadedModel) -> pb2.ModelVersion:
    card = model.card
    return pb2.ModelVersion(
        version=model.version,
        architecture=card.architecture,
        execution_provider=model.runtime.provider,
        input_height=card.preprocessing.crop_height,
        input_width=card.preprocessing.crop_width,
        input=input_text(card.preprocessing),
        random_init=random_init(card),
        outputs=[
            pb2.OutputInfo(
                name=o.name, dim=o.dim, layer=o.layer, pooling=o.pooling, l2_normalized=o.l2_normalized, labels=o.labels
            )
            for o in card.outputs
        ],
    )
