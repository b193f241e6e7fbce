"""What the service itself costs per image when inference is nearly free: what a GPU host would see (issue 25).

A null model (the default export's card: resize, centre crop, mean/std; a graph that only averages each channel)
makes inference cost ~nothing, so that what is left is the service: gRPC, checks, decode, resize, batching, metrics.
Rows: the floor (the same decode + resize + crop in plain Pillow, one process per core) and the real server under
Embed calls of one and of 32 photos from client threads in client processes.

Prints one table: images/s, p50/p99 per call (per image for the floor), CPU ms per image (the server process's, from
/proc), efficiency (floor CPU / server CPU per image) and GIL-held ms per image (a second run of the same load under
py-spy --gil), then the projected ceiling of a 16-core GPU host and the functions that hold the GIL most.
Usage: python bench/frontend.py [--seconds S] [--repo DIR] [--images DIR] [--threads N] [--clients N]
The default card comes from build/repo (the default export of efficientnet-lite0, as bench/embed.py uses), exported
if missing; the null model, the server's data and py-spy's samples live in a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import io
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnx
from google.protobuf import json_format
from onnx import TensorProto, helper
from PIL import Image

from offshelf.protos.v1 import embedding_pb2, embedding_pb2_grpc, model_card_pb2
from offshelf.service.models.loaded_model import read_card

from common import SHARED_DATA, ServerProcess
from embed import ROOT, ensure_repo, own_cpu_seconds, process_cpu_seconds, row

NULL_MODEL = "null"
PHOTOS = 256  # photos cycled through, read by each process
CALL_SIZES = (1, 32)  # images per Embed call, one row each
GPU_HOST_CORES = 16
SERVER_PROCESSES = 1  # serving processes today; --workers is issue 25's
SAMPLE_RATE = 200  # py-spy samples per second
TOP_HOLDERS = 10


def write_null_model(card_dir: pathlib.Path, repo: pathlib.Path) -> pathlib.Path:
    """repo/null/1: the preprocessing of card_dir's card over a graph whose one output is each channel's mean (3
    floats an image), so that inference costs ~nothing and everything before and after it is the service's."""
    pre = read_card(card_dir).preprocessing
    version_dir = repo / NULL_MODEL / "1"
    version_dir.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [pre.input_name], ["embedding"], axes=[2, 3], keepdims=0)],
        NULL_MODEL,
        [
            helper.make_tensor_value_info(
                pre.input_name, TensorProto.FLOAT, ["batch", 3, pre.crop_height, pre.crop_width]
            )
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, version_dir / "model.onnx")
    card = model_card_pb2.ModelCard(
        name=NULL_MODEL,
        version=1,
        architecture="channel-mean",
        preprocessing=pre,
        outputs=[model_card_pb2.OutputSpec(name="embedding", layer="input", pooling="avg", dim=3)],
    )
    (version_dir / "card.json").write_text(json_format.MessageToJson(card, preserving_proto_field_name=True))
    return repo


def crop_pixels(data: bytes, size: int, crop_height: int, crop_width: int) -> np.ndarray:
    """The least the server must do per image: decode (draft mode: JPEGs much larger than needed decode at a reduced
    scale), resize the shorter side to `size`, centre crop, uint8 RGB pixels; as service/models/preprocess.py does,
    without its checks."""
    image = Image.open(io.BytesIO(data))
    short, long = sorted(image.size)
    scaled = (size, int(size * long / short))
    resized = scaled if image.width <= image.height else scaled[::-1]
    image.draft("RGB", resized)
    image = image.convert("RGB").resize(resized, Image.Resampling.BILINEAR)
    top = int(round((image.height - crop_height) / 2.0))
    left = int(round((image.width - crop_width) / 2.0))
    return np.asarray(image.crop((left, top, left + crop_width, top + crop_height)))


def floor_work(ready: Callable[[], None], paths: list[pathlib.Path], geometry: tuple, seconds: float) -> dict:
    """One floor process: crop_pixels over the photos for `seconds` after ready(); its own CPU seconds."""
    jpegs = [path.read_bytes() for path in paths]
    ready()
    durations: list[float] = []
    cpu, deadline = own_cpu_seconds(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        begun = time.perf_counter()
        crop_pixels(jpegs[len(durations) % len(jpegs)], *geometry)
        durations.append(time.perf_counter() - begun)
    return {"durations": durations, "images": len(durations), "cpu": own_cpu_seconds() - cpu, "end": time.monotonic()}


def client_work(
    ready: Callable[[], None], address: str, paths: list[pathlib.Path], per_call: int, threads: range, seconds: float
) -> dict:
    """One client process: a thread per number in `threads` sends Embed calls of `per_call` photos (requests built
    beforehand: the clients share the cores with the server) for `seconds` after ready()."""
    jpegs = [path.read_bytes() for path in paths]
    requests = [
        embedding_pb2.EmbedRequest(model=NULL_MODEL, images=[jpegs[(i + j) % len(jpegs)] for j in range(per_call)])
        for i in range(0, len(jpegs), per_call)
    ]
    with grpc.insecure_channel(address) as channel:
        embed = embedding_pb2_grpc.EmbeddingStub(channel).Embed
        answer = embed(requests[0], timeout=60)  # connected, and the server answers the null model
        assert [len(r.outputs["embedding"].values) for r in answer.results] == [3] * per_call, answer
        ready()
        deadline = time.monotonic() + seconds

        def call_until_deadline(thread: int) -> tuple[list[float], collections.Counter[str]]:
            durations: list[float] = []
            failures: collections.Counter[str] = collections.Counter()
            k = thread * 7919  # threads start at different photos
            while time.monotonic() < deadline:
                begun = time.perf_counter()
                try:
                    embed(requests[k % len(requests)], timeout=60)
                    durations.append(time.perf_counter() - begun)
                except grpc.RpcError as err:
                    failures[err.code().name] += 1
                k += 1
            return durations, failures

        with ThreadPoolExecutor(len(threads)) as pool:
            outcomes = list(pool.map(call_until_deadline, threads))
    durations = [d for ds, _ in outcomes for d in ds]
    failures = sum((f for _, f in outcomes), collections.Counter())
    return {"durations": durations, "images": len(durations) * per_call, "failures": failures, "end": time.monotonic()}


def _released(work: Callable, barrier, results, index: int, args: tuple) -> None:
    """A process of released_together: ready() waits until every process is set up, then until the parent lets
    them all go."""

    def ready() -> None:
        barrier.wait(120)
        barrier.wait(120)

    results.put((index, work(ready, *args)))


def released_together(work: Callable, args: list[tuple], on_go: Callable[[], None]) -> list[dict]:
    """work(ready, *args[i]) in a new process per args[i], their timed parts started together after each one's setup;
    on_go() runs just before, while they wait, so that what it starts or reads covers the same span. Processes are
    spawned, not forked: the parent has gRPC channels."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(args) + 1), context.Queue()
    processes = [context.Process(target=_released, args=(work, barrier, results, i, a)) for i, a in enumerate(args)]
    for process in processes:
        process.start()
    try:
        barrier.wait(120)
        on_go()
        barrier.wait(120)
        outcomes = dict(results.get(timeout=600) for _ in processes)
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    return [outcomes[i] for i in range(len(args))]


def load_row(name: str, outcomes: list[dict], started: float, cpu: float) -> dict:
    """embed.py's row over every process's calls, and their failures."""
    durations = [d for o in outcomes for d in o["durations"]]
    images = sum(o["images"] for o in outcomes)
    wall = max(o["end"] for o in outcomes) - started
    failures = sum((o.get("failures", collections.Counter()) for o in outcomes), collections.Counter())
    return {**row(name, images, durations, wall, cpu), "images": images, "failures": failures}


def floor_row(paths: list[pathlib.Path], geometry: tuple, seconds: float) -> dict:
    """What the service's own decode and resize would cost with nothing around them, a process per core."""
    processes = os.cpu_count() or 1
    started: list[float] = []
    outcomes = released_together(
        floor_work, [(paths, geometry, seconds)] * processes, lambda: started.append(time.monotonic())
    )
    name = f"floor: Pillow decode + resize + crop, {processes} processes"
    return load_row(name, outcomes, started[0], sum(o["cpu"] for o in outcomes))


class GilSampler:
    """py-spy record --gil on a process: the samples in which one of its threads holds the GIL, and where. --idle
    keeps a GIL holder the OS shows sleeping (a blocking call made without releasing the GIL still holds it);
    --nonblocking does not pause the server at each sample."""

    def __init__(self, pid: int, folder: pathlib.Path):
        self.pid, self.raw = pid, folder / f"gil-{time.monotonic_ns()}.txt"
        self.process: subprocess.Popen | None = None
        self.started = 0.0

    @staticmethod
    def executable() -> str | None:
        beside = pathlib.Path(sys.executable).with_name("py-spy")
        return str(beside) if beside.exists() else shutil.which("py-spy")

    def start(self) -> None:
        """Returns once py-spy samples (attaching takes a moment), so that the load starts inside its span."""
        command = [self.executable(), "record", "--pid", str(self.pid), "--gil", "--idle", "--nonblocking"]
        command += ["--nolineno", "--rate", str(SAMPLE_RATE), "--format", "raw", "--output", str(self.raw)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        said = []
        for line in self.process.stdout:  # py-spy's messages go to stdout
            if "Sampling process" in line:
                self.started = time.monotonic()
                return
            said.append(line.strip())
        raise RuntimeError(f"py-spy did not start sampling (exit {self.process.wait()}): {' '.join(said)}")

    def stop(self) -> tuple[float, float, collections.Counter[str], bool]:
        """GIL-held seconds (samples / rate), the span sampled, GIL samples per innermost Python function, and
        whether py-spy said it fell behind (fewer samples than the rate, so fewer GIL seconds than held)."""
        self.process.send_signal(signal.SIGINT)
        messages, _ = self.process.communicate(timeout=60)
        span = time.monotonic() - self.started
        holders: collections.Counter[str] = collections.Counter()
        for line in self.raw.read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            holders[stack.rsplit(";", 1)[-1]] += int(count)
        return sum(holders.values()) / SAMPLE_RATE, span, holders, "behind in sampling" in messages

    def close(self) -> None:
        """Ends py-spy if a failure left it sampling."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def thread_ranges(threads: int, clients: int) -> list[range]:
    """The client threads' numbers, split as evenly as can be over the client processes."""
    bounds = [threads * c // clients for c in range(clients + 1)]
    return [range(bounds[c], bounds[c + 1]) for c in range(clients)]


def drive(args: argparse.Namespace, server: ServerProcess, per_call: int, before: Callable[[], None]) -> dict:
    """The load of one service row; CPU is the server process's over the same span. before() runs just before it."""
    pid, marks = server.process.pid, {}

    def go() -> None:
        before()
        marks["cpu"], marks["started"] = process_cpu_seconds(pid), time.monotonic()

    work = [(server.address, args.paths, per_call, threads, args.seconds) for threads in args.thread_ranges]
    outcomes = released_together(client_work, work, go)
    cpu = process_cpu_seconds(pid) - marks["cpu"]
    name = f"service: Embed, {per_call} image{'s' * (per_call > 1)}/call, {args.threads} threads / {args.clients} procs"
    return load_row(name, outcomes, marks["started"], cpu)


def service_rows(args: argparse.Namespace, repo: pathlib.Path, folder: pathlib.Path) -> tuple[list[dict], list[str]]:
    """Each call size twice: a run for throughput, latency and CPU, then a run under py-spy for the GIL. Returns the
    rows and py-spy's problems (no GIL column then)."""
    settings = dict(setting.split("=", 1) for setting in args.set)
    server = ServerProcess(repo, folder / "data", drain_seconds=0, **settings)
    rows = []
    problems = [] if GilSampler.executable() else ["py-spy is not installed (pip install py-spy)"]
    try:
        server.wait_serving()
        for per_call in CALL_SIZES:
            print(f"service, {per_call} image(s) per call ...", file=sys.stderr)
            load = drive(args, server, per_call, lambda: None)
            if not problems:
                print(f"service, {per_call} image(s) per call, under py-spy ...", file=sys.stderr)
                try:
                    load.update(gil_of(args, server, per_call, folder))
                except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                    problems.append(f"py-spy failed: {err}")
            rows.append(load)
    finally:
        server.terminate()
    return rows, problems


def gil_of(args: argparse.Namespace, server: ServerProcess, per_call: int, folder: pathlib.Path) -> dict:
    """GIL-held ms per image and the GIL's busy share over a run of the same load under py-spy."""
    sampler = GilSampler(server.process.pid, folder)
    try:
        sampled = drive(args, server, per_call, sampler.start)
        gil_seconds, span, holders, behind = sampler.stop()
    finally:
        sampler.close()
    return {
        "gil_ms": gil_seconds / sampled["images"] * 1000,
        "gil_share": gil_seconds / span,
        "holders": holders,
        "behind": behind,
        "sampled_ips": sampled["ips"],
    }


def print_table(args: argparse.Namespace, rows: list[dict]) -> None:
    floor_cpu = rows[0]["cpu_ms"]
    print(
        f"\nNull model (channel means) behind the default card of {args.card_dir}: resize {args.pre.resize_shorter}, "
        f"crop {args.pre.crop_height}x{args.pre.crop_width}; {len(args.paths)} JPEGs from {args.images}, "
        f"{os.cpu_count()} cores, {args.seconds:.0f} s per run, server settings: {args.set or 'defaults'}\n"
    )
    print(
        f"| {'measurement':<52} | {'images/s':>9} | {'p50 ms':>8} | {'p99 ms':>8} | {'CPU ms/image':>12} "
        f"| {'efficiency':>10} | {'GIL ms/image':>12} |"
    )
    print(f"|{'-' * 54}|{'-' * 10}:|{'-' * 9}:|{'-' * 9}:|{'-' * 13}:|{'-' * 11}:|{'-' * 13}:|")
    for i, r in enumerate(rows):
        gil = f"{r['gil_ms']:.3f}" if "gil_ms" in r else "n/a" if i else "-"
        print(
            f"| {r['name']:<52} | {r['ips']:9.1f} | {r['p50']:8.2f} | {r['p99']:8.2f} | {r['cpu_ms']:12.3f} "
            f"| {floor_cpu / r['cpu_ms']:10.0%} | {gil:>12} |"
        )


def print_notes(rows: list[dict], problems: list[str], load_before: tuple) -> None:
    """How each column was measured, the projected ceiling, the GIL's holders, the machine's load."""
    print(
        "\nCPU ms/image: user + system CPU of the server process (/proc/<pid>/stat) over the run; the floor's: its "
        "processes' own. efficiency: floor CPU ms/image / this row's. p50/p99: per call (floor: per image)."
    )
    if problems:
        print(f"GIL ms/image n/a: {'; '.join(problems)}.")
    else:
        print(
            f"GIL ms/image: a second run of the same load under `py-spy record --gil --idle --nonblocking --rate "
            f"{SAMPLE_RATE}` on the server: samples in which a thread of it held the GIL / {SAMPLE_RATE} Hz / images "
            "that run served (wall time: on a busy machine it includes a holder's waits for a core)."
        )
    print(
        f"Ceiling of a {GPU_HOST_CORES}-core GPU host = min({GPU_HOST_CORES} / server CPU s per image, "
        f"{SERVER_PROCESSES} process(es) / GIL s per image):"
    )
    for r in rows[1:]:
        cpu_term = GPU_HOST_CORES / (r["cpu_ms"] / 1000)
        if "gil_ms" in r:
            gil_term = SERVER_PROCESSES / (r["gil_ms"] / 1000)
            gil_text, ceiling = f"{SERVER_PROCESSES} / {r['gil_ms']:.3f} ms = {gil_term:.0f}", min(cpu_term, gil_term)
            ceiling_text = f"{ceiling:.0f}"
        else:
            gil_text, ceiling_text = "n/a", f"at most {cpu_term:.0f}"
        print(
            f"  {r['name']}: min({GPU_HOST_CORES} / {r['cpu_ms']:.3f} ms = {cpu_term:.0f}, {gil_text}) "
            f"= {ceiling_text} images/s"
        )
    for r in rows[1:]:
        if r["failures"]:
            print(f"Failed calls, {r['name']}: {dict(r['failures'])} (not counted).")
        if "holders" in r:
            total = sum(r["holders"].values()) or 1
            print(
                f"GIL held {r['gil_share']:.0%} of the py-spy run of {r['name']} ({r['sampled_ips']:.0f} images/s "
                f"under py-spy{'; py-spy fell behind: GIL undercounted' if r['behind'] else ''}); innermost Python "
                "functions holding it, share of GIL samples:"
            )
            for holder, count in r["holders"].most_common(TOP_HOLDERS):
                print(f"  {count / total:6.1%}  {holder}")
    print(
        f"Load average (1, 5, 15 min): before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per run")
    parser.add_argument("--repo", type=pathlib.Path, default=ROOT / "build" / "repo", help="default export cache")
    parser.add_argument("--images", type=pathlib.Path, default=SHARED_DATA / "ukbench", help="JPEG photos")
    parser.add_argument("--threads", type=int, default=16, help="client threads, over all client processes")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a server setting")
    args = parser.parse_args()
    load_before = os.getloadavg()
    args.paths = sorted(args.images.rglob("*.jpg"))[:PHOTOS]
    if not args.paths:
        sys.exit(f"no JPEGs under {args.images}")
    args.thread_ranges = thread_ranges(args.threads, args.clients)
    print("default card ...", file=sys.stderr)
    args.card_dir = ensure_repo(args.repo)
    args.pre = read_card(args.card_dir).preprocessing
    if args.pre.mode not in ("", "crop"):
        sys.exit(f"{args.card_dir}: the card keeps images whole ({args.pre.mode}); the floor and null model crop")
    print("floor ...", file=sys.stderr)
    geometry = (args.pre.resize_shorter, args.pre.crop_height, args.pre.crop_width)
    rows = [floor_row(args.paths, geometry, args.seconds)]
    with tempfile.TemporaryDirectory(prefix="offshelf-frontend-") as folder:
        repo = write_null_model(args.card_dir, pathlib.Path(folder) / "repo")
        served, problems = service_rows(args, repo, pathlib.Path(folder))
    print_table(args, rows + served)
    print_notes(rows + served, problems, load_before)


if __name__ == "__main__":
    main()
