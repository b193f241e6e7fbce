"""The offshelf.v1.Heads servicer: training, listing and deleting heads, and Classify."""

from __future__ import annotations

import grpc
import numpy as np

from offshelf.protos.v1 import heads_pb2 as pb2
from offshelf.protos.v1 import heads_pb2_grpc as pb2_grpc
from offshelf.service.api.checks import check_image_count, check_name
from offshelf.service.errors import FailedPrecondition, InvalidArgument
from offshelf.service.heads.fitting import KINDS
from offshelf.service.heads.registry import HeadRegistry
from offshelf.service.heads.storage import HeadJob
from offshelf.service.heads.training import HeadEntry, LabelledImages, TrainSpec
from offshelf.service.models.binding import describe
from offshelf.service.models.registry import ModelRegistry


def _job_message(job: HeadJob) -> pb2.HeadJob:
    return pb2.HeadJob(
        head=job.head,
        version=job.version,
        state=f"JOB_STATE_{job.state.name}",
        progress=job.progress,
        message=job.message,
    )


def _head_message(entry: HeadEntry) -> pb2.Head:
    head = pb2.Head(job=_job_message(entry.job), versions=entry.versions)
    if entry.served is not None:
        head.card.CopyFrom(entry.served.card)
    return head


class HeadsServicer(pb2_grpc.HeadsServicer):
    def __init__(self, heads: HeadRegistry, models: ModelRegistry, max_images: int):
        self.heads = heads
        self.models = models
        self.max_images = max_images

    def TrainHead(self, request: pb2.TrainHeadRequest, context: grpc.ServicerContext) -> pb2.HeadJob:
        _check_train_request(request)
        images = None
        if request.WhichOneof("source") == "images":
            source = request.images
            images = LabelledImages(
                source.model,
                source.version,
                source.output,
                [i.image for i in source.images],
                [i.label for i in source.images],
            )
        spec = TrainSpec(request.name, request.kind, request.collection, images, request.add_classes)
        return _job_message(self.heads.train(spec))

    def GetHead(self, request: pb2.GetHeadRequest, context: grpc.ServicerContext) -> pb2.Head:
        return _head_message(self.heads.get(request.name))

    def ListHeads(self, request: pb2.ListHeadsRequest, context: grpc.ServicerContext) -> pb2.ListHeadsResponse:
        return pb2.ListHeadsResponse(heads=[_head_message(e) for e in self.heads.all()])

    def DeleteHead(self, request: pb2.DeleteHeadRequest, context: grpc.ServicerContext) -> pb2.DeleteHeadResponse:
        self.heads.delete(request.name)
        return pb2.DeleteHeadResponse()

    def Classify(self, request: pb2.ClassifyRequest, context: grpc.ServicerContext) -> pb2.ClassifyResponse:
        served = self.heads.serving(request.head)
        binding = served.binding
        if request.model and request.model != binding.model:
            raise FailedPrecondition(
                f"head {request.head!r} is bound to {describe(binding)}; the request is for model {request.model!r}"
            )
        check_image_count(len(request.images), self.max_images)
        if request.k < 0:
            raise InvalidArgument(f"k={request.k}: ask for 1 or more labels (0 means 5)")
        model = self.models.for_binding(binding, f"head {request.head!r}")
        vectors = model.embed(list(request.images), request.augmentation)[binding.output]
        probabilities = served.probabilities(vectors)
        k = min(request.k or 5, len(served.card.labels))
        results = []
        for row in probabilities:
            top = np.argsort(-row)[:k]
            results.append(
                pb2.Classification(
                    top=[pb2.LabelScore(label=served.card.labels[i], probability=float(row[i])) for i in top]
                )
            )
        return pb2.ClassifyResponse(head=served.card.name, version=served.card.version, results=results)


def _check_train_request(request: pb2.TrainHeadRequest) -> None:
    check_name("head", request.name)
    if request.kind not in KINDS:
        raise InvalidArgument(f"unknown head kind {request.kind!r}; choose one of: {', '.join(KINDS)}")
    if request.add_classes and request.kind != "ncm":
        raise InvalidArgument("add_classes works with kind ncm only")
    source = request.WhichOneof("source")
    if source is None:
        raise InvalidArgument("no training data: set collection or images")
    if source == "images":
        if not request.images.images:
            raise InvalidArgument("images is empty: send labelled images")
        unlabelled = [i for i, item in enumerate(request.images.images) if not item.label]
        if unlabelled:
            raise InvalidArgument(f"image {unlabelled[0]} has no label")
