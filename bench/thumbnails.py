"""What thumbnails cost: the mean JPEG size of a collection's thumbnails at each thumbnail_size, and so the bytes
per million items, on real photos; and the milliseconds an Add spends making one.
Usage: python bench/thumbnails.py [--images DIR] [--count N]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from offshelf.service.index.thumbnails import thumbnail

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))[: args.count]]
    print(f"\n{len(photos)} JPEGs from {args.images}\n")
    print("| thumbnail_size | mean bytes | p99 bytes | GB per million items | ms to make one |")
    print("|--:|--:|--:|--:|--:|")
    for size in (64, 96, 128, 192, 256):
        started = time.perf_counter()
        sizes = np.array([len(thumbnail(photo, size)) for photo in photos])
        ms = (time.perf_counter() - started) / len(photos) * 1000
        mean, p99 = sizes.mean(), np.percentile(sizes, 99)
        print(f"| {size} | {mean:,.0f} | {p99:,.0f} | {mean * 1e6 / 1e9:.1f} | {ms:.2f} |")


if __name__ == "__main__":
    main()
