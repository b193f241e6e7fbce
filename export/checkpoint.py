"""The checkpoint format shared by ``offshelf train`` (writes) and ``offshelf export`` (reads).

A torch.save'd dict: ``{"offshelf_checkpoint": 1, "architecture": str, "class_names": [str],
"state_dict": {...}, "preprocessing": {card Preprocessing fields}}``. A plain state dict
(e.g. a torchvision checkpoint, or a fine-tuned model whose classifier was replaced) is read
too, with no architecture, class names or preprocessing of its own.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch
from google.protobuf import json_format

from offshelf.export.errors import ExportError
from offshelf.protos.v1 import model_card_pb2 as card_pb2

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    architecture: str = ""
    class_names: list[str] | None = None
    preprocessing: card_pb2.Preprocessing | None = None


def write_checkpoint(
    path: pathlib.Path,
    architecture: str,
    state_dict: dict[str, torch.Tensor],
    class_names: list[str],
    preprocessing: card_pb2.Preprocessing,
) -> None:
    torch.save(
        {
            "offshelf_checkpoint": FORMAT_VERSION,
            "architecture": architecture,
            "class_names": class_names,
            "state_dict": state_dict,
            "preprocessing": json_format.MessageToDict(preprocessing, preserving_proto_field_name=True),
        },
        path,
    )


def read_checkpoint(path: pathlib.Path) -> Checkpoint:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExportError(f"{path} is not a readable torch checkpoint ({err})") from err
    if not isinstance(data, dict):
        raise ExportError(f"{path} holds a {type(data).__name__}, not a state dict or an offshelf checkpoint")
    if "offshelf_checkpoint" in data:
        preprocessing = json_format.ParseDict(data["preprocessing"], card_pb2.Preprocessing())
        return Checkpoint(data["state_dict"], data["architecture"], list(data["class_names"]), preprocessing)
    for key in ("state_dict", "model"):  # common wrappers of training scripts
        if isinstance(data.get(key), dict):
            data = data[key]
    return Checkpoint({k.removeprefix("module."): v for k, v in data.items() if isinstance(v, torch.Tensor)})
