"""The engine (models/, index/, heads/ and the modules they share) does not know the gRPC door: importing it loads
neither grpc nor the servicers nor the generated service stubs, so that another door (HTTP) or a test drives it
directly. The Milvus store is left out: pymilvus is a gRPC client of Milvus, not our wire."""

import json
import subprocess
import sys

ENGINE = [
    "offshelf.service.errors",
    "offshelf.service.tracing",
    "offshelf.service.models.registry",
    "offshelf.service.heads.registry",
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
