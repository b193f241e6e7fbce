"""SIGTERM under load: no call the server accepted fails, and the process exits within drain + grace.

Each run starts a server on the real EfficientNet-Lite0, sends it one-image Embed calls from --clients threads
without a pause, sends SIGTERM after a second and keeps calling until the process has exited. Prints one row per
run: the calls answered OK, refused (UNAVAILABLE: the server was shutting down or gone, retry elsewhere), failed
(any other status, e.g. CANCELLED), and the seconds from SIGTERM to exit.

Usage: python bench/shutdown.py [--runs 10] [--clients 16] [--repo DIR] [--images DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from common import sigterm_under_load
from embed import ensure_repo

ROOT = pathlib.Path(__file__).resolve().parent.parent

DRAIN_SECONDS = 1.0
GRACE_SECONDS = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16, help="threads calling without a pause")
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    parser.add_argument("--images", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ukbench")
    args = parser.parse_args()
    ensure_repo(args.repo)
    photos = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))[:64]]
    print(
        "| run | OK | refused or unreachable (UNAVAILABLE) | failed "
        f"| SIGTERM to exit, s (drain {DRAIN_SECONDS:g} + grace {GRACE_SECONDS:g}) | exit code |"
    )
    print("|--:|--:|--:|--:|--:|--:|")
    failed_total = 0
    for run in range(1, args.runs + 1):
        codes, seconds, exit_code = sigterm_under_load(
            args.repo,
            pathlib.Path(tempfile.mkdtemp()),
            "efficientnet-lite0",
            photos,
            args.clients,
            drain_seconds=DRAIN_SECONDS,
            grace_seconds=GRACE_SECONDS,
        )
        failed = {code: n for code, n in codes.items() if code not in ("OK", "UNAVAILABLE")}
        failed_total += sum(failed.values())
        shown = ", ".join(f"{code} {n}" for code, n in failed.items()) or "0"
        print(
            f"| {run} | {codes['OK']:,} | {codes['UNAVAILABLE']:,} | {shown} | {seconds:.2f} | {exit_code} |",
            flush=True,
        )
    print(f"\n{failed_total} failed calls in {args.runs} runs")


if __name__ == "__main__":
    main()
