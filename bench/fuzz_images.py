"""Image fuzzer: mutated JPEG, PNG, GIF and WebP files made from real photos, each sent alone to Embed on a real
server (the tiny model: decoding does not depend on the network). A third of the cases keep the file intact and
carry a mutated EXIF block instead (entries of random tags, types, counts and offsets, or a real block's bytes
mutated). Prints how often each status came back, per kind of mutation; any INTERNAL or UNKNOWN is a bug, and its
input is written to --failures.

Usage: python bench/fuzz_images.py [--cases 100000 | --seconds 600] [--concurrency 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import io
import pathlib
import random
import struct
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from PIL import Image
from tqdm import tqdm

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc

from common import ServerProcess, shared_photos, write_identity_model

ROOT = pathlib.Path(__file__).resolve().parent.parent

FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


@dataclass(frozen=True)
class Seeds:
    files: list[bytes]  # encoded photos, mutated as bytes
    photos: list[Image.Image]  # decoded, re-encoded with a mutated EXIF block


def seeds() -> Seeds:
    """Real photos, small, in every accepted format (and with EXIF where the format takes it)."""
    files, photos = [], []
    for path in shared_photos("ukbench", 12):
        photo = Image.open(path).convert("RGB")
        photo.thumbnail((160, 160))
        photos.append(photo)
        for format in FORMATS:
            buffer = io.BytesIO()
            options = {"exif": photo.getexif().tobytes()} if format in ("JPEG", "WEBP", "PNG") else {}
            photo.save(buffer, format, **options)
            files.append(buffer.getvalue())
    return Seeds(files, photos)


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


# Tags Pillow reads with a fixed type (writing them back packs their values as that type), pointers to sub-IFDs
# (EXIF, GPS, interoperability) and orientation.
EXIF_TAGS = (0x0100, 0x0101, 0x0102, 0x0103, 0x010F, 0x0112, 0x011A, 0x0128, 0x0131, 0x8769, 0x8825, 0xA005, 0x927C)


def exif_entries(rng: random.Random) -> bytes:
    """A TIFF-structured EXIF block of random entries: tags Pillow knows or any, types 0-15 (1-12 are defined),
    counts from 0 to 2^32-1, values inline or offsets inside, past or at the end of the block; sometimes a second
    IFD or a loop back to the first."""
    order = rng.choice("<>")
    count = rng.randint(0, 12)
    data_at = 8 + 2 + 12 * count + 4
    data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    entries = b""
    for _ in range(count):
        tag = rng.choice(EXIF_TAGS) if rng.random() < 0.8 else rng.randrange(1 << 16)
        kind = rng.randrange(16) if rng.random() < 0.3 else rng.randint(1, 12)
        number = rng.choice([0, 1, 2, 5, rng.randrange(1 << 8), rng.randrange(1 << 32)])
        value = rng.choice([rng.randrange(1 << 32), data_at + rng.randrange(max(len(data), 1)), 8, 1 << 31])
        entries += struct.pack(order + "HHII", tag, kind, number, value)
    following = rng.choice([0, 0, 8, data_at + len(data), rng.randrange(1 << 32)])
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HIH", 42, 8, count)
    return b"Exif\x00\x00" + header + entries + struct.pack(order + "I", following) + data


def mutated_exif(photos: list[Image.Image], rng: random.Random) -> bytes:
    """A photo as JPEG, PNG or WebP with a mutated EXIF block: random entries, or a valid block's bytes mutated."""
    photo = rng.choice(photos).copy()  # saving sets attributes on the image: a copy per thread
    if rng.random() < 0.5:
        block = exif_entries(rng)
    else:
        valid = Image.Exif()
        valid[0x0112] = rng.randint(1, 8)
        valid[0x010F] = "offshelf"
        block = b"Exif\x00\x00" + mutate(valid.tobytes()[6:], rng)
    buffer = io.BytesIO()
    photo.save(buffer, rng.choice(("JPEG", "PNG", "WEBP")), exif=block[:60_000])
    return buffer.getvalue()


def case(number: int, seed: int, originals: Seeds) -> tuple[str, bytes]:
    """(kind of mutation, input) of a case: reproducible from its number and the seed."""
    rng = random.Random(seed * 1_000_003 + number)
    if rng.random() < 1 / 3:
        return "exif", mutated_exif(originals.photos, rng)
    return "bytes", mutate(rng.choice(originals.files), rng)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=0, help="run this long instead of --cases")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--failures", type=pathlib.Path, default=ROOT / "build" / "fuzz-failures")
    args = parser.parse_args()

    originals = seeds()
    root = pathlib.Path(tempfile.mkdtemp(prefix="offshelf-fuzz-"))
    server = ServerProcess(write_identity_model(root / "repo", 64), root / "data", drain_seconds=0)
    codes: collections.Counter[tuple[str, str]] = collections.Counter()
    started = time.perf_counter()
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            stub = embedding_pb2_grpc.EmbeddingStub(channel)

            def send(number: int) -> None:
                kind, data = case(number, args.seed, originals)
                try:
                    stub.Embed(embedding_pb2.EmbedRequest(model="random-projection-64", images=[data]), timeout=60)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                codes[kind, code] += 1
                if code in ("INTERNAL", "UNKNOWN"):
                    args.failures.mkdir(parents=True, exist_ok=True)
                    (args.failures / f"case-{number}.bin").write_bytes(data)

            with ThreadPoolExecutor(args.concurrency) as pool, tqdm(unit="case") as progress:
                deadline, chunk, first = started + args.seconds, 1000, 0
                while (time.perf_counter() < deadline) if args.seconds else (first < args.cases):
                    last = first + chunk if args.seconds else min(first + chunk, args.cases)
                    for _ in pool.map(send, range(first, last)):
                        progress.update()
                    first = last
    finally:
        server.kill()
    seconds = time.perf_counter() - started
    print(f"\n{first} mutated images in {seconds:.0f} s ({first / seconds:.0f}/s), seed {args.seed}\n")
    kinds = ("bytes", "exif")
    print("| status | " + " | ".join(f"{kind} mutants" for kind in kinds) + " |\n|---|" + "--:|" * len(kinds))
    for code in sorted({code for _, code in codes}, key=lambda c: -sum(codes[k, c] for k in kinds)):
        print(f"| {code} | " + " | ".join(f"{codes[kind, code]:,}" for kind in kinds) + " |")
    bad = sum(codes[kind, code] for kind in kinds for code in ("INTERNAL", "UNKNOWN"))
    print(f"\nINTERNAL or UNKNOWN: {bad}" + (f" (inputs in {args.failures})" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
