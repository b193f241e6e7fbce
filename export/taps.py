"""Layer taps: any layer of a network as a named output, pooled and optionally L2-normalised.

An output is requested as ``NAME=LAYER[:POOL][:l2]``: LAYER is a module name (or a node name
of torchvision's feature extraction), POOL one of none/avg/max/gem[=P]/rmac. A conv map with
no POOL is average-pooled; a vector is passed through.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from offshelf.export.errors import ExportError
from offshelf.export.pooling import POOLINGS, Pool
from offshelf.export.zoo import last_linear


@dataclass
class OutputRequest:
    name: str
    layer: str
    pooling: str = ""  # "": avg for a conv map, none for a vector
    p: float = 3.0
    l2: bool = False

    def describe(self) -> str:
        pooling = f"gem(p={self.p:g})" if self.pooling == "gem" else self.pooling
        return pooling + ("+l2" if self.l2 else "")


def parse_output(spec: str) -> OutputRequest:
    name, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or not name or not parts[0]:
        raise ExportError(f"--output {spec!r}: write NAME=LAYER[:POOL][:l2], e.g. pool5=features.30:gem:l2")
    request = OutputRequest(name, parts[0])
    for part in parts[1:]:
        kind, _, value = part.partition("=")
        if kind == "l2":
            request.l2 = True
        elif kind in POOLINGS:
            request.pooling = kind
            if value:
                if kind != "gem":
                    raise ExportError(f"--output {spec!r}: only gem takes a parameter (gem=P)")
                request.p = float(value)
        else:
            raise ExportError(
                f"--output {spec!r}: unknown pooling {kind!r}; choose one of {', '.join(POOLINGS)}, gem=P, and l2"
            )
    return request


def default_outputs(module: nn.Module) -> list[OutputRequest]:
    """logits (the classifier) and embedding (the penultimate layer: what feeds the classifier, before any
    dropout or flatten)."""
    classifier = last_linear(module)
    nodes = get_graph_node_names(module)[1]
    modules = dict(module.named_modules())
    position = nodes.index(classifier) - 1
    while isinstance(modules.get(nodes[position]), nn.Dropout | nn.Flatten) or nodes[position].startswith(
        ("flatten", "dropout")
    ):
        position -= 1
    return [OutputRequest("logits", classifier), OutputRequest("embedding", nodes[position])]


def layer_names(module: nn.Module) -> list[str]:
    names = dict.fromkeys(name for name, _ in module.named_modules() if name)
    return list(names | dict.fromkeys(get_graph_node_names(module)[1]))


def list_layers(module: nn.Module, height: int, width: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(module name, type, output shape for one image) of every module, in execution order."""
    seen: list[tuple[str, str, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(
            lambda m, i, o, name=name: seen.append(
                (name, type(m).__name__, tuple(o.shape[1:]) if isinstance(o, torch.Tensor) else ())
            )
        )
        for name, m in module.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, height, width))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


class TappedModel(nn.Module):
    """Returns the requested outputs, in order, as a tuple of (N, dim) tensors."""

    def __init__(
        self, module: nn.Module, requests: list[OutputRequest], height: int, width: int, any_size: bool = False
    ):
        """height, width: the input's (the size traced at); any_size: the graph will take other sizes too (an image
        kept whole), so outputs whose size would depend on it (R-MAC's fixed regions, a flattened map) are refused."""
        super().__init__()
        known = layer_names(module)
        for request in requests:
            if request.layer not in known:
                close = difflib.get_close_matches(request.layer, known, n=5, cutoff=0.5)
                raise ExportError(
                    f"output {request.name!r}: no layer {request.layer!r}"
                    + (f"; close names: {', '.join(close)}" if close else "")
                    + "; `offshelf export layers ARCH` lists them"
                )
        names = [r.name for r in requests]
        if len(set(names)) != len(names):
            raise ExportError(f"output names must differ: {names}")
        self.layers = list(dict.fromkeys(r.layer for r in requests))
        self.extractor = create_feature_extractor(module, return_nodes={layer: layer for layer in self.layers}).eval()
        with torch.no_grad():
            shapes = {k: v.shape for k, v in self.extractor(torch.zeros(1, 3, height, width)).items()}
        pools = []
        for request in requests:
            shape = shapes[request.layer]
            spatial = len(shape) == 4
            request.pooling = request.pooling or ("avg" if spatial else "none")
            if request.pooling not in ("none",) and not spatial:
                raise ExportError(
                    f"output {request.name!r}: {request.layer} is not a spatial map (shape "
                    f"{tuple(shape[1:])}), so it cannot be {request.pooling}-pooled; drop the pooling"
                )
            if any_size and spatial and request.pooling in ("rmac", "none"):
                raise ExportError(
                    f"output {request.name!r}: {request.pooling} pooling is fixed to one input size; with "
                    "--preprocess no-crop or fit use avg, max or gem"
                )
            pools.append(Pool(request.pooling, request.l2, request.p, tuple(shape[2:]) if spatial else None))
        self.requests = requests
        self.pools = nn.ModuleList(pools)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.extractor(x)
        return tuple(pool(features[r.layer]) for r, pool in zip(self.requests, self.pools, strict=True))


class Float16(nn.Module):
    """Weights and compute in fp16; inputs and outputs stay fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(y.float() for y in self.model(x.half()))
