"""``offshelf export merge``: a backbone and a head trained on its embedding, as one ONNX file.

The merged graph takes the backbone's image input and returns the backbone's outputs plus
the head's ``probabilities``; the head's class names are in the model's metadata ("labels",
JSON), so the file deploys anywhere onnxruntime runs, without offshelf.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

import onnx
from google.protobuf import json_format

from offshelf.export.errors import ExportError
from offshelf.protos.v1 import heads_pb2, model_card_pb2


def merge(backbone_dir: pathlib.Path, head_dir: pathlib.Path) -> onnx.ModelProto:
    try:
        card = json_format.Parse((backbone_dir / "card.json").read_text(), model_card_pb2.ModelCard())
        head_card = json_format.Parse((head_dir / "card.json").read_text(), heads_pb2.HeadCard())
        backbone, head = onnx.load(backbone_dir / "model.onnx"), onnx.load(head_dir / "head.onnx")
    except (OSError, json_format.ParseError) as err:
        raise ExportError(f"cannot read the backbone or head: {err}") from err
    binding = head_card.binding
    digest = hashlib.sha256(card.preprocessing.SerializeToString(deterministic=True)).hexdigest()
    if (binding.model, binding.version, binding.preprocessing_hash) != (
        card.name,
        card.version,
        digest,
    ) or binding.output not in [o.name for o in card.outputs]:
        raise ExportError(
            f"head {head_card.name!r} was trained on {binding.model} v{binding.version} output "
            f"{binding.output!r}, not on {card.name} v{card.version} ({backbone_dir})"
        )
    head.ir_version = backbone.ir_version
    del head.opset_import[:]
    head.opset_import.extend(backbone.opset_import)
    head = onnx.compose.add_prefix(head, "head/")
    merged = onnx.compose.merge_models(
        backbone,
        head,
        io_map=[(binding.output, "head/embedding")],
        outputs=[o.name for o in backbone.graph.output] + ["head/probabilities"],
    )
    merged.graph.output[-1].name = "probabilities"
    for node in merged.graph.node:
        node.output[:] = ["probabilities" if o == "head/probabilities" else o for o in node.output]
    onnx.helper.set_model_props(
        merged,
        {
            "labels": json.dumps(list(head_card.labels)),
            "head": f"{head_card.name} v{head_card.version} ({head_card.kind})",
        },
    )
    onnx.checker.check_model(merged)
    return merged


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="offshelf export merge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("backbone", type=pathlib.Path, help="model version folder, e.g. models/efficientnet-lite0/1")
    p.add_argument("head", type=pathlib.Path, help="head version folder, e.g. offshelf-data/heads/birds/3")
    p.add_argument("--out", type=pathlib.Path, required=True, help="the merged .onnx file to write")
    args = p.parse_args(argv)
    try:
        merged = merge(args.backbone, args.head)
    except ExportError as err:
        print(f"offshelf export merge: error: {err}", file=sys.stderr)
        return 2
    onnx.save(merged, args.out)
    print(f"wrote {args.out}: outputs {', '.join(o.name for o in merged.graph.output)}")
    return 0
