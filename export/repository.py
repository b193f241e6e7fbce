"""Export a network to ONNX, check it against torch on real photos, write it into a model repository.

Layout: ``<repo>/<model>/<version>/model.onnx`` and ``card.json`` (an ``offshelf.v1.ModelCard``),
optionally ``<repo>/<model>/config.pbtxt`` for Triton's onnxruntime backend. A version folder
appears whole or not at all: it is assembled under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib.metadata
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch
from google.protobuf import json_format
from PIL import Image
from torchvision import transforms

from offshelf.export.errors import ExportError
from offshelf.export.taps import Float16, OutputRequest, TappedModel, default_outputs
from offshelf.export.zoo import Network, last_linear
from offshelf.protos.v1 import model_card_pb2 as card_pb2

OPSET = 18
PARITY_TOLERANCE = 1e-4
MIN_AGREEMENT = {"fp16": 0.99, "int8": 0.97}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
Log = Callable[[str], None]


@dataclass
class ExportRequest:
    network: Network
    repo: pathlib.Path
    name: str
    version: int = 0  # 0: the next free version
    outputs: list[OutputRequest] | None = None  # None: logits and embedding
    precision: str = "fp32"
    check_images: list[pathlib.Path] = field(default_factory=list)  # empty: scikit-image's photos
    calibration_images: list[pathlib.Path] = field(default_factory=list)  # int8: static when given
    tolerance: float = PARITY_TOLERANCE
    min_agreement: float | None = None  # None: MIN_AGREEMENT[precision]
    force: bool = False
    triton: bool = False
    triton_max_batch_size: int = 64
    preprocess: str = "crop"  # crop (the network's own), no-crop or fit: see the card's Preprocessing.mode
    size: int = 0  # S of no-crop and fit; 0: the network's crop size


MODES = ("crop", "no-crop", "fit")
MIN_SIDE = 32  # a side of an image kept whole, at least (the service's preprocessing keeps it there)


def preprocessing_for(request: ExportRequest) -> card_pb2.Preprocessing:
    """The network's preprocessing, or the image kept whole (no-crop: the shorter side S; fit: the longer side S)."""
    if request.preprocess not in MODES:
        raise ExportError(f"unknown --preprocess {request.preprocess!r}; choose one of {', '.join(MODES)}")
    pre = card_pb2.Preprocessing()
    pre.CopyFrom(request.network.preprocessing)
    if request.preprocess == "crop":
        if request.size:
            raise ExportError("--size applies to --preprocess no-crop and fit; crop keeps the network's sizes")
        return pre
    size = request.size or pre.crop_height
    if size < MIN_SIDE:
        raise ExportError(f"--size {size}: at least {MIN_SIDE} pixels")
    pre.mode, pre.resize_shorter, pre.crop_height, pre.crop_width = request.preprocess, size, 0, 0
    return pre


def images_in(folder: pathlib.Path, limit: int) -> list[pathlib.Path]:
    """Up to `limit` photos from a folder tree, spread over it (sorted, evenly strided)."""
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ExportError(f"no .jpg, .png or .webp photos under {folder}")
    return found[:: max(1, len(found) // limit)][:limit]


def default_check_images() -> list[pathlib.Path]:
    """scikit-image's bundled colour photos: real images that need no download."""
    try:
        import skimage
    except ImportError as err:
        raise ExportError("no check images: pass --check-images DIR or pip install scikit-image") from err
    data = pathlib.Path(skimage.__file__).parent / "data"
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
    return [data / n for n in names if (data / n).exists()]


def card_transform(pre: card_pb2.Preprocessing, whole: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """torchvision's version of the card's preprocessing, for the checks. For a model that keeps images whole
    (no-crop, fit) the photos are resized to S x S so that they stack into one batch (the parity check compares
    tensors, whatever they show), unless `whole`."""
    interpolation = transforms.InterpolationMode[pre.interpolation.upper()]
    size = pre.resize_shorter
    if pre.mode in ("", "crop"):
        resize = [
            transforms.Resize(size, interpolation=interpolation),
            transforms.CenterCrop((pre.crop_height, pre.crop_width)),
        ]
    elif not whole:
        resize = [transforms.Resize((size, size), interpolation=interpolation)]
    elif pre.mode == "no-crop":
        resize = [transforms.Resize(size, interpolation=interpolation)]
    else:  # fit: the longer side S, the shorter at least MIN_SIDE

        def fit(image: Image.Image) -> Image.Image:
            short, long = sorted(image.size)
            target = (int(size * short / long), size)
            if target[0] < MIN_SIDE:  # the aspect kept: the longer side grows
                target = (MIN_SIDE, int(MIN_SIDE * long / short))
            width, height = target if image.width <= image.height else target[::-1]
            return transforms.functional.resize(image, [height, width], interpolation)

        resize = [transforms.Lambda(fit)]
    return transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(list(pre.mean), list(pre.std))])


def load_batch(paths: list[pathlib.Path], pre: card_pb2.Preprocessing) -> torch.Tensor:
    if not paths:
        raise ExportError("no check images found: the checks need at least one real photo")
    transform = card_transform(pre)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def export_onnx(
    model: torch.nn.Module,
    path: pathlib.Path,
    input_name: str,
    output_names: list[str],
    example: torch.Tensor,
    any_size: bool = False,
) -> None:
    """any_size: the input's height and width are dynamic too (an image kept whole)."""
    example = example[:1].repeat(2, 1, 1, 1)  # torch.export would specialise a batch dimension it sees as 1
    dims = {0: torch.export.Dim("batch")}
    if any_size:
        dims |= {2: torch.export.Dim("height", min=MIN_SIDE), 3: torch.export.Dim("width", min=MIN_SIDE)}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=output_names,
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes=(dims,),
        external_data=False,
        verbose=False,
    )


def run_onnx(path: pathlib.Path, input_name: str, batch: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return [
        np.concatenate(parts)
        for parts in zip(
            *(session.run(outputs, {input_name: batch[i : i + 16].numpy()}) for i in range(0, len(batch), 16)),
            strict=True,
        )
    ]


def quantize_int8(fp32: pathlib.Path, out: pathlib.Path, input_name: str, calibration: torch.Tensor | None) -> str:
    import onnx
    from onnxruntime import quantization

    model = onnx.load(fp32)
    del model.graph.value_info[:]  # the exporter's shape annotations trip the quantizer's own shape inference
    onnx.save(model, fp32)
    if calibration is None:
        quantization.quantize_dynamic(str(fp32), str(out), weight_type=quantization.QuantType.QInt8)
        return "dynamic"

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: calibration[i : i + 8].numpy()} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # Percentile calibration (clipping activation outliers) agreed best with fp32 on EfficientNet-Lite0.
    quantization.quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        weight_type=quantization.QuantType.QInt8,
        activation_type=quantization.QuantType.QUInt8,
        calibrate_method=quantization.CalibrationMethod.Percentile,
    )
    return "static"


@contextlib.contextmanager
def stage(log: Log, what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    log(f"{what} ({time.perf_counter() - started:.1f} s)")


def next_version(model_dir: pathlib.Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def triton_config(model_dir: pathlib.Path, max_batch_size: int) -> str:
    """config.pbtxt for Triton's onnxruntime backend over the same repository. Triton reads one config for all of a
    model's versions, so its version policy lists those whose input and outputs are the newest version's."""
    cards = {
        int(p.name): json_format.Parse((p / "card.json").read_text(), card_pb2.ModelCard())
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "card.json").exists()
    }

    def signature(card: card_pb2.ModelCard) -> tuple:
        pre = card.preprocessing
        return pre.input_name, pre.crop_height, pre.crop_width, [(o.name, o.dim) for o in card.outputs]

    card = cards[max(cards)]
    versions = sorted(v for v, c in cards.items() if signature(c) == signature(card))
    policy = (
        "all { }" if len(versions) == len(cards) else f"specific {{ versions: [ {', '.join(map(str, versions))} ] }}"
    )
    pre = card.preprocessing
    outputs = "\n".join(f'  {{ name: "{o.name}" data_type: TYPE_FP32 dims: [ {o.dim} ] }},' for o in card.outputs)
    return (
        f'name: "{model_dir.name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"version_policy: {{ {policy} }}\n"
        f'input [\n  {{ name: "{pre.input_name}" data_type: TYPE_FP32 dims: [ 3, {pre.crop_height or -1}, '
        f"{pre.crop_width or -1} ] }}\n]\noutput [\n{outputs.rstrip(',')}\n]\ndynamic_batching {{ }}\n"
    )


def export_model(request: ExportRequest, log: Log = print) -> pathlib.Path:
    """Exports, checks and writes ``repo/name/<version>``; returns that folder. Writes nothing on error."""
    network, pre = request.network, preprocessing_for(request)
    whole = pre.mode in ("no-crop", "fit")
    if request.precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"unknown precision {request.precision!r}; choose fp32, fp16 or int8")
    model_dir = request.repo / request.name
    version = request.version or next_version(model_dir)
    if (model_dir / str(version)).exists():
        raise ExportError(f"{model_dir / str(version)} exists; pick another --version or omit it for the next one")
    with stage(log, "tapped the layers"):
        requests = request.outputs or default_outputs(network.module)
        height, width = (pre.resize_shorter,) * 2 if whole else (pre.crop_height, pre.crop_width)
        tapped = TappedModel(network.module, requests, height, width, any_size=whole).eval()
    classifier = last_linear(network.module)
    specs = [
        card_pb2.OutputSpec(
            name=r.name,
            layer=r.layer,
            pooling=r.describe().removesuffix("+l2"),
            l2_normalized=r.l2,
            labels=network.class_names if r.layer == classifier and r.pooling == "none" else [],
        )
        for r in requests
    ]
    batch = load_batch(request.check_images or default_check_images(), pre)
    with torch.no_grad():
        reference = [t.numpy() for t in tapped(batch)]
    for spec, array in zip(specs, reference, strict=True):
        spec.dim = array.shape[1]
    names = [s.name for s in specs]

    new_model = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = pathlib.Path(tempfile.mkdtemp(dir=model_dir, prefix=".incoming-"))
    written = False
    try:
        fp32 = staged / "model.fp32.onnx"
        with stage(log, f"traced and exported to ONNX (opset {OPSET})"):
            export_onnx(tapped, fp32, pre.input_name, names, batch[:1], any_size=whole)
        with stage(log, f"checked fp32 against torch on {len(batch)} photos"):
            diffs = {
                n: float(np.abs(o - r).max())
                for n, o, r in zip(names, run_onnx(fp32, pre.input_name, batch), reference, strict=True)
            }
            if whole:  # and on one photo kept whole, at its own size
                photo = card_transform(pre, whole=True)(Image.open(default_check_images()[0]).convert("RGB"))[None]
                with torch.no_grad():
                    expected = [t.numpy() for t in tapped(photo)]
                for n, o, r in zip(names, run_onnx(fp32, pre.input_name, photo), expected, strict=True):
                    diffs[n] = max(diffs[n], float(np.abs(o - r).max()))
        parity = card_pb2.Parity(
            images=len(batch),
            max_abs_diff=max(diffs.values()),
            max_abs_diff_by_output=diffs,
            tolerance=request.tolerance,
        )
        log(f"max |torch - onnxruntime| = {parity.max_abs_diff:.2e}")
        if parity.max_abs_diff > request.tolerance:
            raise ExportError(
                f"onnxruntime disagrees with torch by {parity.max_abs_diff:.2e} "
                f"(tolerance {request.tolerance:.0e}); nothing was written"
            )
        final, agreement = staged / "model.onnx", None
        if request.precision == "fp32":
            fp32.rename(final)
        else:
            agreement = _reduce_precision(request, tapped, fp32, final, batch, reference, names, specs, log)
            fp32.unlink()
        card = card_pb2.ModelCard(
            name=request.name,
            version=version,
            architecture=network.architecture,
            weights=network.weights,
            preprocessing=pre,
            outputs=specs,
            parity=parity,
            agreement=agreement,
            export=card_pb2.ExportInfo(
                tool="offshelf.export",
                tool_version=importlib.metadata.version("offshelf"),
                torch_version=torch.__version__,
                opset=OPSET,
                precision=request.precision,
                created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            ),
        )
        (staged / "card.json").write_text(json_format.MessageToJson(card, indent=2, preserving_proto_field_name=True))
        staged.chmod(0o755)
        staged.rename(model_dir / str(version))
        written = True
        if request.triton:
            (model_dir / "config.pbtxt").write_text(triton_config(model_dir, request.triton_max_batch_size))
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        if new_model and not written:
            shutil.rmtree(model_dir, ignore_errors=True)  # a new model's folder holds nothing else
    return model_dir / str(version)


def _reduce_precision(
    request: ExportRequest,
    tapped: TappedModel,
    fp32: pathlib.Path,
    out: pathlib.Path,
    batch: torch.Tensor,
    reference: list[np.ndarray],
    names: list[str],
    specs: list[card_pb2.OutputSpec],
    log: Log,
) -> card_pb2.Agreement:
    input_name = request.network.preprocessing.input_name
    quantization = ""
    if request.precision == "fp16":
        with stage(log, "exported fp16 (weights and compute; fp32 inputs and outputs)"):
            whole = request.preprocess != "crop"
            export_onnx(Float16(copy.deepcopy(tapped)).eval(), out, input_name, names, batch[:1], any_size=whole)
    else:
        calibration = None
        if request.calibration_images:
            calibration = load_batch(request.calibration_images, preprocessing_for(request))
        with stage(
            log,
            "quantized to int8 "
            + (f"(static, calibrated on {len(calibration)} photos)" if calibration is not None else "(dynamic)"),
        ):
            quantization = quantize_int8(fp32, out, input_name, calibration)
    with stage(log, f"checked {request.precision} against fp32 torch on {len(batch)} photos"):
        outputs = run_onnx(out, input_name, batch)
    diffs = {n: float(np.abs(o - r).max()) for n, o, r in zip(names, outputs, reference, strict=True)}
    classes = [i for i, spec in enumerate(specs) if spec.labels]
    top1 = float(np.mean(outputs[classes[0]].argmax(1) == reference[classes[0]].argmax(1))) if classes else 1.0
    threshold = request.min_agreement if request.min_agreement is not None else MIN_AGREEMENT[request.precision]
    log(
        f"{request.precision}: top-1 agreement with fp32 {top1:.1%}, max |diff| "
        + ", ".join(f"{n} {d:.2e}" for n, d in diffs.items())
    )
    return card_pb2.Agreement(
        images=len(batch),
        top1=top1,
        max_abs_diff_by_output=diffs,
        threshold=threshold,
        forced=agreement_gate(request.precision, top1, len(batch), threshold, request.force),
        quantization=quantization,
    )


def agreement_gate(precision: str, top1: float, images: int, threshold: float, force: bool) -> bool:
    """The gate of a reduced-precision export: passes at or above the threshold; below it, raises unless forced.
    Returns whether the export passes only because it was forced (the card's ``agreement.forced``)."""
    if top1 >= threshold:
        return False
    if not force:
        raise ExportError(
            f"{precision} agrees with fp32 on top-1 for {top1:.1%} of {images} photos, "
            f"below {threshold:.0%}; nothing was written (--force writes it anyway)"
        )
    return True
