"""Image fuzzer: mutated JPEG, PNG, GIF and WebP files made from real photos, each sent alone to Embed on a real
server (the tiny model: decoding does not depend on the network). Prints how often each status came back; any
INTERNAL or UNKNOWN is a bug, and its input is written to --failures.

Usage: python bench/fuzz_images.py [--cases 100000] [--concurrency 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import io
import pathlib
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from PIL import Image
from tqdm import tqdm

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc  # noqa: E402

from support import ServerProcess, shared_photos, write_identity_model  # noqa: E402

FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


def seeds() -> list[bytes]:
    """Real photos, small, in every accepted format (and with EXIF where the format takes it)."""
    encoded = []
    for path in shared_photos("ukbench", 12):
        photo = Image.open(path).convert("RGB")
        photo.thumbnail((160, 160))
        for format in FORMATS:
            buffer = io.BytesIO()
            options = {"exif": photo.getexif().tobytes()} if format in ("JPEG", "WEBP", "PNG") else {}
            photo.save(buffer, format, **options)
            encoded.append(buffer.getvalue())
    return encoded


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four of: flip bytes, overwrite with extreme values, cut, repeat a slice, splice in another file."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        if kind == 0 and out:
            for _ in range(rng.randint(1, 16)):
                out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == 1 and len(out) > 8:
            position = rng.randrange(len(out) - 4)
            out[position : position + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
        elif kind == 2 and out:
            del out[rng.randrange(len(out)) :]
        elif kind == 3 and len(out) > 2:
            start = rng.randrange(len(out) - 1)
            piece = out[start : start + rng.randint(1, 256)]
            position = rng.randrange(len(out))
            out[position:position] = piece * rng.randint(1, 8)
        else:
            out[: rng.randint(0, 64)] = b""
    return bytes(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--failures", type=pathlib.Path, default=ROOT / "build" / "fuzz-failures")
    args = parser.parse_args()

    originals = seeds()
    root = pathlib.Path(tempfile.mkdtemp(prefix="offshelf-fuzz-"))
    server = ServerProcess(write_identity_model(root / "repo", 64), root / "data", drain_seconds=0)
    codes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            stub = embedding_pb2_grpc.EmbeddingStub(channel)

            def send(case: int) -> None:
                case_rng = random.Random(args.seed * 1_000_003 + case)  # a case is reproducible from its number
                data = mutate(case_rng.choice(originals), case_rng)
                try:
                    stub.Embed(embedding_pb2.EmbedRequest(model="random-projection-64", images=[data]), timeout=60)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                codes[code] += 1
                if code in ("INTERNAL", "UNKNOWN"):
                    args.failures.mkdir(parents=True, exist_ok=True)
                    (args.failures / f"case-{case}.bin").write_bytes(data)

            with ThreadPoolExecutor(args.concurrency) as pool:
                list(tqdm(pool.map(send, range(args.cases)), total=args.cases, unit="case"))
    finally:
        server.kill()
    seconds = time.perf_counter() - started
    print(f"\n{args.cases} mutated images in {seconds:.0f} s ({args.cases / seconds:.0f}/s), seed {args.seed}\n")
    print("| status | cases |\n|---|---|")
    for code, count in codes.most_common():
        print(f"| {code} | {count} |")
    bad = codes["INTERNAL"] + codes["UNKNOWN"]
    print(f"\nINTERNAL or UNKNOWN: {bad}" + (f" (inputs in {args.failures})" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
