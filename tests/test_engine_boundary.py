"""The engine (models/, index/, heads/ and the modules they share) does not know the gRPC door: importing it loads
neither grpc nor the servicers nor the generated service stubs, so that another door (HTTP) or a test drives it
directly. The Milvus store is left out: pymilvus is a gRPC client of Milvus, not our wire."""

import ast
import json
import subprocess
import sys

from common import ROOT

ENGINE = [
    "offshelf.service.errors",
    "offshelf.service.tracing",
    "offshelf.service.models.registry",
    "offshelf.service.heads.registry",
    "offshelf.service.heads.training",
    "offshelf.service.index.embedded.registry",
]


def test_the_engine_imports_no_grpc_door():
    program = (
        "import importlib, json, sys\n"
        f"for name in {ENGINE!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.endswith('_pb2_grpc')"
        " or m.startswith('offshelf.service.api'))))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", program], capture_output=True, check=True).stdout)
    assert loaded == []


def test_the_engines_augmentations_are_the_wires():
    from offshelf.protos.v1 import embedding_pb2
    from offshelf.service.models.preprocess import Augmentation

    wire = {name.removeprefix("AUGMENTATION_"): value for name, value in embedding_pb2.Augmentation.items()}
    assert {a.name: a.value for a in Augmentation} == wire


FILE_FORMATS = {"offshelf.protos.v1.model_card_pb2", "offshelf.protos.v1.heads_pb2"}  # the model and head cards


def test_the_engine_imports_no_wire_message_but_the_cards():
    """models/, index/, heads/ and the shared modules speak their own types; generated messages appear only as the
    file formats of the model and head cards (the doors convert the rest)."""
    service = ROOT / "service"
    engine = [*service.glob("*.py"), *(p for d in ("models", "index", "heads") for p in (service / d).rglob("*.py"))]
    found = {}
    for path in engine:
        if path.name in ("server.py", "cli.py"):  # the process's wiring, above the doors
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("offshelf.protos"):
                names = {f"{node.module}.{alias.name}" for alias in node.names}
                found[str(path.relative_to(ROOT))] = sorted(names - FILE_FORMATS)
    assert {path: names for path, names in found.items() if names} == {}


def test_no_class_in_the_service_is_over_250_lines():
    """Issue 24: a class a maintainer can read whole; over 250 lines, it holds more than one concern."""
    sizes = {
        f"{path.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
        for path in (ROOT / "service").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    assert len(sizes) > 50
    assert {name: lines for name, lines in sizes.items() if lines > 250} == {}
