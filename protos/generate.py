"""Generates the Python stubs of protos/v1/*.proto into a folder (default: protos/v1).

The .proto files are compiled under the virtual path offshelf/protos/, so the stubs
import each other as ``offshelf.protos.v1``. Run through ``make protos``.
"""

import argparse
import importlib.resources
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

PROTOS = pathlib.Path(__file__).resolve().parent
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes the stubs into out_dir and returns their paths."""
    sources = sorted(f"offshelf/protos/v1/{p.name}" for p in (PROTOS / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-Ioffshelf/protos={PROTOS}",
            f"-I{importlib.resources.files('grpc_tools') / '_proto'}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for stub in sorted((pathlib.Path(tmp) / "offshelf/protos/v1").iterdir()):
            shutil.copy(stub, out_dir / stub.name)
            written.append(out_dir / stub.name)
        return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=PROTOS / "v1")
    for path in generate(parser.parse_args().out):
        print(path)
