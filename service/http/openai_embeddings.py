"""OpenAI-style image embeddings (POST /v1/embeddings), as infinity offers, for libraries that speak that API.

``{"model": "<model>[/<output>]", "input": [<image as base64 or a data: URL>, ...], "encoding_format": "float" |
"base64"}`` answers ``{"object": "list", "data": [{"object": "embedding", "embedding": [...], "index": i}], "model",
"usage"}``. The output defaults to ``embedding``; the latest version serves. Not supported: text input, token
arrays, ``dimensions`` (a collection's whitening reduces dimensions), ``user``. Usage counts images as tokens."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from offshelf.service.api.checks import check_image_count
from offshelf.service.errors import InvalidArgument
from offshelf.service.http.door import Door
from offshelf.service.http.oip_rest import json_object
from offshelf.service.models.registry import ModelRegistry

DEFAULT_OUTPUT = "embedding"


def image_of(item: Any, index: int) -> bytes:
    """An input element's image: base64, or a data: URL holding base64."""
    if not isinstance(item, str):
        raise InvalidArgument(
            f"input[{index}] is {type(item).__name__}: send each image as a base64 string or data URL"
        )
    text = item.partition(",")[2] if item.startswith("data:") else item
    if item.startswith("data:") and ";base64," not in item:
        raise InvalidArgument(f"input[{index}] is a data URL without ;base64,: encode the image in base64")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as err:
        raise InvalidArgument(
            f"input[{index}] is not base64 ({err}); offshelf embeds images, sent as base64 or data URLs, not text"
        ) from err


def encoded(vector: np.ndarray) -> str:
    """A vector as OpenAI's base64 encoding has it: little-endian float32."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


class EmbeddingsRoute:
    def __init__(self, door: Door, models: ModelRegistry, max_images: int):
        self.door = door
        self.models = models
        self.max_images = max_images

    def routes(self) -> list[Route]:
        return [self.door.route("/v1/embeddings", "POST", "/offshelf.v1.Embedding/Embed", self.embeddings)]

    async def embeddings(self, request: Request) -> Response:
        body = json_object(await request.body(), "the embeddings request")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidArgument('"model" names a served model, optionally with an output: "<model>/<output>"')
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list):
            raise InvalidArgument('"input" is a list of images, each a base64 string or a data URL')
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise InvalidArgument(f"encoding_format {encoding!r} is not float or base64")
        unsupported = sorted(set(body) - {"model", "input", "encoding_format", "user"})
        if unsupported:
            raise InvalidArgument(f"{unsupported} are not supported: send model, input and encoding_format")
        check_image_count(len(inputs), self.max_images)
        images = [image_of(item, i) for i, item in enumerate(inputs)]
        model_name, _, output = name.partition("/")
        vectors = await self.door.run(self._embed, model_name, output or DEFAULT_OUTPUT, images)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                if encoding == "base64"
                else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": len(images), "total_tokens": len(images)}
        return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})

    def _embed(self, name: str, output: str, images: list[bytes]) -> np.ndarray:
        model = self.models.get(name, 0)
        model.check_outputs([output])
        names = [f"input[{i}]" for i in range(len(images))]
        return model.embed(images, 0, names)[output]
