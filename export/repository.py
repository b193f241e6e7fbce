"""Export a built model to ONNX, check it against torch on real photos, write it into a model repository.

Layout: ``<repo>/<model>/<version>/model.onnx`` and ``card.json`` (an ``offshelf.v1.ModelCard``).
A version folder appears whole or not at all: it is assembled under a temporary name and renamed.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch
from google.protobuf import json_format
from PIL import Image
from torchvision import transforms

from offshelf.export.zoo import BuiltModel, ExportError
from offshelf.protos.v1 import model_card_pb2 as card_pb2

OPSET = 18
PARITY_TOLERANCE = 1e-4


def default_check_images() -> list[pathlib.Path]:
    """scikit-image's bundled colour photos: real images that need no download."""
    try:
        import skimage
    except ImportError as err:
        raise ExportError("no check images: pass --check-images DIR or pip install scikit-image") from err
    data = pathlib.Path(skimage.__file__).parent / "data"
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
    return [data / n for n in names if (data / n).exists()]


def card_transform(pre: card_pb2.Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """torchvision's version of the card's preprocessing, for the parity check."""
    interpolation = transforms.InterpolationMode[pre.interpolation.upper()]
    return transforms.Compose(
        [
            transforms.Resize(pre.resize_shorter, interpolation=interpolation),
            transforms.CenterCrop((pre.crop_height, pre.crop_width)),
            transforms.ToTensor(),
            transforms.Normalize(list(pre.mean), list(pre.std)),
        ]
    )


def load_check_batch(paths: list[pathlib.Path], pre: card_pb2.Preprocessing) -> torch.Tensor:
    if not paths:
        raise ExportError("no check images found: the parity check needs at least one real photo")
    transform = card_transform(pre)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def export_onnx(built: BuiltModel, path: pathlib.Path, example: torch.Tensor) -> None:
    input_name = built.preprocessing.input_name
    torch.onnx.export(
        built.module,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=[o.name for o in built.outputs],
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        verbose=False,
    )


def measure_parity(built: BuiltModel, path: pathlib.Path, batch: torch.Tensor, tolerance: float) -> card_pb2.Parity:
    """Max |torch - onnxruntime| per output on the given batch of preprocessed photos."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_outputs = session.run([o.name for o in built.outputs], {built.preprocessing.input_name: batch.numpy()})
    with torch.no_grad():
        torch_outputs = built.module(batch)
    diffs = {
        spec.name: float(np.abs(onnx_out - torch_out.numpy()).max())
        for spec, onnx_out, torch_out in zip(built.outputs, onnx_outputs, torch_outputs, strict=True)
    }
    return card_pb2.Parity(
        images=len(batch), max_abs_diff=max(diffs.values()), max_abs_diff_by_output=diffs, tolerance=tolerance
    )


def next_version(model_dir: pathlib.Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def write_model(
    built: BuiltModel,
    architecture: str,
    repo: pathlib.Path,
    name: str,
    check_images: list[pathlib.Path],
    tolerance: float = PARITY_TOLERANCE,
    log: Callable[[str], None] = print,
) -> pathlib.Path:
    """Exports, checks parity and writes ``repo/name/<next version>``; returns that folder."""
    model_dir = repo / name
    version = next_version(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = pathlib.Path(tempfile.mkdtemp(dir=model_dir, prefix=".incoming-"))
    try:
        batch = load_check_batch(check_images, built.preprocessing)
        started = time.perf_counter()
        export_onnx(built, staged / "model.onnx", batch[:1])
        log(f"traced and exported to ONNX (opset {OPSET}) in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        parity = measure_parity(built, staged / "model.onnx", batch, tolerance)
        log(
            f"checked against torch on {parity.images} photos in {time.perf_counter() - started:.1f} s: "
            f"max |torch - onnxruntime| = {parity.max_abs_diff:.2e}"
        )
        if parity.max_abs_diff > tolerance:
            raise ExportError(
                f"onnxruntime disagrees with torch by {parity.max_abs_diff:.2e} "
                f"(tolerance {tolerance:.0e}); nothing was written"
            )
        card = card_pb2.ModelCard(
            name=name,
            version=version,
            architecture=architecture,
            weights=built.weights,
            preprocessing=built.preprocessing,
            outputs=built.outputs,
            parity=parity,
            export=card_pb2.ExportInfo(
                tool="offshelf.export",
                tool_version=importlib.metadata.version("offshelf"),
                torch_version=torch.__version__,
                opset=OPSET,
                precision="fp32",
                created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            ),
        )
        (staged / "card.json").write_text(
            json_format.MessageToJson(card, indent=2, preserving_proto_field_name=True) + "\n"
        )
        target = model_dir / str(version)
        staged.chmod(0o755)
        staged.rename(target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target
