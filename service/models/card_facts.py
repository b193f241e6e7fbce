"""What a model card says, in the words ListModels, ModelMetadata and `offshelf models` show."""

from __future__ import annotations

from offshelf.protos.v1 import model_card_pb2 as card_pb2
from offshelf.service.models.preprocess import mode_of

RANDOM_WEIGHTS = "random initialisation"  # how `offshelf export --weights random` names the weights (export/zoo.py)


def random_init(card: card_pb2.ModelCard) -> bool:
    """The weights were never trained: the model runs, and its outputs mean nothing."""
    return card.weights.source.startswith(RANDOM_WEIGHTS)


def input_text(spec: card_pb2.Preprocessing) -> str:
    """ "224x224" for a model that takes a centre crop; the rule for one that keeps images whole."""
    mode = mode_of(spec)
    if mode == "crop":
        return f"{spec.crop_height}x{spec.crop_width}"
    return f"whole image, {'shorter' if mode == 'no-crop' else 'longer'} side {spec.resize_shorter}"
