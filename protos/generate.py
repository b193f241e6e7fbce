"""Generates the Python stubs of protos/<package>/*.proto beside them (v1: offshelf's API; inference: the
Open Inference Protocol).

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
PACKAGES = ("v1", "inference")


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes the stubs into out_dir/<package>/ and returns their paths."""
    sources = sorted(f"offshelf/protos/{k}/{p.name}" for k in PACKAGES for p in (PROTOS / k).glob("*.proto"))
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
        written = []
        for package in PACKAGES:
            (out_dir / package).mkdir(parents=True, exist_ok=True)
            for stub in sorted((pathlib.Path(tmp) / "offshelf/protos" / package).iterdir()):
                shutil.copy(stub, out_dir / package / stub.name)
                written.append(out_dir / package / stub.name)
        return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=PROTOS)
    for path in generate(parser.parse_args().out):
        print(path)
