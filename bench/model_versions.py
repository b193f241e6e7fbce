"""Resident memory of a server with 1 and with 4 versions of EfficientNet-Lite0 loaded (issue 16).

Copies build/repo's efficientnet-lite0/1 (offshelf export efficientnet-lite0 --repo build/repo) to versions 1-4
of a repository of its own, then starts a server with the default version policy (the latest 1) and one with
{"all": true}, and prints their RSS once SERVING, after 16 Embed calls.
Usage: python bench/model_versions.py [--repo build/repo]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

from offshelf.clients import Client

from common import ServerProcess, skimage_photo
from search import rss_mb

ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = "efficientnet-lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo")
    args = parser.parse_args()
    source = args.repo / MODEL / "1"
    if not source.is_dir():
        sys.exit(f"{source} is missing: run offshelf export {MODEL} --repo {args.repo} first")
    work = pathlib.Path(tempfile.mkdtemp())
    for version in range(1, 5):
        shutil.copytree(source, work / "repo" / MODEL / str(version))
    rows = []
    for policy in ({"latest": 1}, {"all": True}):
        (work / "repo" / MODEL / "serving.json").write_text(json.dumps({"version_policy": policy}))
        server = ServerProcess(work / "repo", work / f"data-{len(rows)}", drain_seconds=0, repository_poll_seconds=0)
        try:
            server.wait_serving(300)
            with Client(server.address) as client:
                loaded = len(client.list_models()[0].versions)
                for _ in range(16):
                    client.embed([skimage_photo("coffee.png")], model=MODEL)
            rows.append((json.dumps(policy), loaded, rss_mb(server.process.pid)))
        finally:
            server.terminate()
    print(f"\n{MODEL}, 4 versions in the repository, server defaults (2 instances)\n")
    print("| version policy | versions loaded | server RSS MB |")
    print("|---|--:|--:|")
    for policy, loaded, rss in rows:
        print(f"| `{policy}` | {loaded} | {rss:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
