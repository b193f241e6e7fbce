#!/usr/bin/env bash
# The GPU benchmark kit, for the lent GPU machine (one H200, Python 3.12 at /opt/torch/.venv with torch and
# onnxruntime 1.30 CPU-only, no network). Run from the repository root as the last call of the kit's plan
# (.gpu/PLAN.md: stash calls carry the onnxruntime-gpu wheel in parts first; the folder .gpu/ is git-ignored and made
# by hand). Within 8 minutes it
#   1. install: joins the onnxruntime-gpu wheel from the parts in /tmp/ort-parts, checks its sha256, and installs it,
#      the carried wheels (.gpu/wheels, /tmp/gpu-wheels) and offshelf itself into /tmp/site (first on PYTHONPATH);
#   2. check: onnxruntime must list and really use CUDAExecutionProvider; the GPU, driver and CUDA libraries;
#   3. tests: the tests about CUDA (tests/test_cuda_check.py, the CUDA test of tests/test_train.py);
#   4. bench: bench/embed.py with its in-process rows on onnxruntime's CUDA provider and the server on CUDA
#      (--repo .gpu/repo --images .gpu/photos), plus rows of 32-image calls (Embed of JPEGs, OIP FP32 tensors).
# Each step runs under `timeout` and prints its seconds; everything printed also goes to $OUT/gpu.log.
# Environment: GPU_BENCH_SECONDS (seconds per bench row, default 5, shortened to fit the budget), GPU_BENCH_SET
# (server settings, default "execution_provider=cuda max_batch_size=32"), GPU_BUDGET_SECONDS (default 465),
# GPU_ALLOW_CPU=1 (go on when CUDA does not work: to try the kit on a machine without a GPU), GPU_SITE, GPU_ORT_PARTS.
# Usage: bash bench/gpu.sh [install|check|tests|bench] (no argument: all four, in order, logged). Exit codes: 0 all
# passed; 1 a test or the bench failed (or CUDA's check, without GPU_ALLOW_CPU); 2 .gpu/repo or .gpu/photos not
# carried; 3 onnxruntime-gpu parts or wheels missing; 4 the joined wheel's sha256 differs; 8 a step timed out.
# bench/gpu_kit.sh builds .gpu/ (wheels, onnxruntime-gpu parts, repo, photos, stash.sh, PLAN.md) in one command.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
SITE=${GPU_SITE:-/tmp/site}
PARTS=${GPU_ORT_PARTS:-/tmp/ort-parts}
OUT=${OUT:-/tmp/gpu-out}
BUDGET=${GPU_BUDGET_SECONDS:-465}
ORT_WHEEL=/tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
ORT_BYTES=255569273
ORT_SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7  # .gpu/ort.sha256 wins when carried
MODEL_DIR=.gpu/repo/efficientnet-lite0/1
CUDA_TESTS=(tests/test_cuda_check.py tests/test_train.py)
# test_cuda_check's refusal test asserts that CUDA does NOT work (a server with execution_provider=cuda exits 1): on
# a working GPU it would wait 60 s and fail. The bench's server runs with execution_provider=cuda instead, which
# refuses to start unless CUDA works.
CUDA_TESTS_K="cuda and not refuses_to_start"

mkdir -p "$OUT"

# Installs wheel files into $SITE: pip when the machine's Python has it, else their contents unpacked (no wheel here
# has a .data folder but purelib/platlib ones are handled; no scripts are needed).
install_wheels() {
    if python3 -m pip --version > /dev/null 2>&1; then
        python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "$@"
    else
        echo "(no pip for $(command -v python3): unpacking the wheels)"
        python3 - "$SITE" "$@" << 'EOF'
import pathlib, shutil, sys, zipfile

site = pathlib.Path(sys.argv[1])
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    for data in site.glob("*.data"):
        for kind in ("purelib", "platlib"):
            for item in (data / kind).glob("*") if (data / kind).is_dir() else []:
                shutil.copytree(item, site / item.name, dirs_exist_ok=True) if item.is_dir() else shutil.copy2(item, site)
        shutil.rmtree(data)
EOF
    fi
}

do_install() {
    local want=$ORT_SHA256 got have marker w
    [[ -f .gpu/ort.sha256 ]] && want=$(cut -d' ' -f1 .gpu/ort.sha256)
    mkdir -p "$SITE" "$PARTS"
    echo "python3: $(command -v python3), $(python3 -V 2>&1); install target $SITE"

    # 1. onnxruntime-gpu, from the stashed parts (plus any this call carried)
    if compgen -G ".gpu/ort-*/part*" > /dev/null; then cp .gpu/ort-*/part* "$PARTS"/; fi
    if [[ -f $SITE/.ort-installed && $(cat "$SITE/.ort-installed") == "$want" && -d $SITE/onnxruntime ]]; then
        echo "onnxruntime-gpu: installed in $SITE by an earlier run (sha256 ${want:0:16}...)"
    else
        if ! compgen -G "$PARTS/part*" > /dev/null; then
            echo "ERROR: no onnxruntime-gpu parts in $PARTS. Run the stash calls first (each carries .gpu/ort-K and" \
                "runs 'bash .gpu/stash.sh'), back to back: the machine, and /tmp with it, goes back 30 s after a call."
            return 3
        fi
        ls -la "$PARTS"
        have=$(du -cb "$PARTS"/part* | tail -1 | cut -f1)
        if ((have != ORT_BYTES)); then
            echo "ERROR: the parts in $PARTS hold $have bytes; the wheel has $ORT_BYTES. A stash call is missing, or" \
                "the machine was handed back between calls (which empties /tmp): redo the stash calls."
            return 3
        fi
        cat "$PARTS"/part* > "$ORT_WHEEL"
        got=$(sha256sum "$ORT_WHEEL" | cut -d' ' -f1)
        if [[ $got != "$want" ]]; then
            echo "ERROR: the joined wheel's sha256 is $got; want $want"
            return 4
        fi
        echo "onnxruntime-gpu wheel joined from $(compgen -G "$PARTS/part*" | wc -l) parts: sha256 ok"
        install_wheels "$ORT_WHEEL"
        echo "$want" > "$SITE/.ort-installed"
        rm -f "$ORT_WHEEL"
    fi

    # 2. the other wheels: .gpu/wheels (carried by this call), .gpu/wheels-extra and /tmp/gpu-wheels (stashed)
    declare -A wheels=()
    for w in .gpu/wheels*/*.whl /tmp/gpu-wheels/*.whl; do
        [[ -f $w ]] && wheels[$(basename "$w")]=$w
    done
    marker=$(printf '%s\n' "${!wheels[@]}" | sort | sha256sum | cut -d' ' -f1)
    if ! compgen -G ".gpu/wheels/*.whl" > /dev/null && [[ -f $SITE/.wheels-installed ]]; then
        echo "wheels: .gpu/wheels not carried; using those an earlier run installed"
    elif ! compgen -G ".gpu/wheels/*.whl" > /dev/null; then
        echo "ERROR: no .gpu/wheels/*.whl: this call must carry .gpu/wheels (grpcio, faiss-cpu, pydantic, ...)"
        return 3
    elif [[ -f $SITE/.wheels-installed && $(cat "$SITE/.wheels-installed") == "$marker" ]]; then
        echo "wheels: the same ${#wheels[@]} installed by an earlier run"
    else
        echo "wheels (${#wheels[@]}): $(printf '%s\n' "${!wheels[@]}" | sort | sed -E 's/-(py[0-9]|cp3).*//' | tr '\n' ' ')"
        install_wheels "${wheels[@]}"
        echo "$marker" > "$SITE/.wheels-installed"
    fi

    # 3. offshelf itself (its folders protos/ export/ train/ service/ clients/ are the package offshelf.*)
    rm -rf "$SITE"/offshelf "$SITE"/offshelf-*.dist-info
    if python3 -m pip --version > /dev/null 2>&1 && python3 -m pip install -q --disable-pip-version-check \
        --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target "$SITE" .; then
        echo "offshelf: installed from $PWD by pip"
    else
        echo "offshelf: pip could not build it here; linking its folders instead"
        rm -rf "$SITE"/offshelf "$SITE"/offshelf-*.dist-info
        mkdir -p "$SITE/offshelf"
        for w in protos export train service clients; do ln -sfn "$PWD/$w" "$SITE/offshelf/$w"; done
        local version
        version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
        mkdir -p "$SITE/offshelf-$version.dist-info"
        printf 'Metadata-Version: 2.1\nName: offshelf\nVersion: %s\n' "$version" > "$SITE/offshelf-$version.dist-info/METADATA"
    fi
    du -sh "$SITE"
}

do_check() {
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu --format=csv || true
    else
        echo "nvidia-smi: not found"
    fi
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    python3 - "$MODEL_DIR/model.onnx" << 'EOF'
import ctypes
import importlib
import importlib.metadata
import os
import sys
import time

import numpy as np
import onnxruntime as ort

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
allow_cpu = os.environ.get("GPU_ALLOW_CPU") == "1"
print(f"onnxruntime {ort.__version__} from {os.path.dirname(ort.__file__)}, device {ort.get_device()}")
providers = ort.get_available_providers()
print(f"onnxruntime.get_available_providers(): {providers}")
if CUDA not in providers and not allow_cpu:
    sys.exit("ERROR: CUDAExecutionProvider is not listed: this is not the onnxruntime-gpu wheel (check PYTHONPATH)")
libraries = ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcufft.so.12"]
for name in [*libraries, "libnvrtc.so.13", "libcudnn.so.9"]:
    try:
        ctypes.CDLL(name)
        print(f"  {name}: loads")
    except OSError as err:
        print(f"  {name}: MISSING ({err})")
ort.preload_dlls()
path = sys.argv[1]
started = time.perf_counter()
session = ort.InferenceSession(path, providers=[CUDA, CPU])
print(f"session on {path}: providers {session.get_providers()} ({time.perf_counter() - started:.1f} s to create)")
if session.get_providers()[0] != CUDA and not allow_cpu:
    sys.exit("ERROR: the session fell back to the CPU: CUDA does not work (see the libraries above)")
for batch in (1, 32):
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    started = time.perf_counter()
    session.run(None, {"image": x})
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(5):
        session.run(None, {"image": x})
    then = (time.perf_counter() - started) / 5
    print(f"  batch {batch}: first run {first * 1000:.0f} ms (cuDNN's search), then {then * 1000:.1f} ms")
del session
# every import of the serving process, and the versions it runs on
server = importlib.import_module("offshelf.service.server")
runtime = importlib.import_module("offshelf.service.models.runtime")
for module in ("faiss", "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection", "google.rpc.status_pb2"):
    importlib.import_module(module)
for package in ("grpcio", "faiss-cpu", "pydantic", "pydantic-settings", "protobuf", "numpy", "onnx",
                "opentelemetry-sdk", "nvidia-ml-py", "nvidia-nvimgcodec-cu13", "offshelf"):
    try:
        print(f"  {package} {importlib.metadata.version(package)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"  {package}: not installed")
print(f"offshelf's runtime: {runtime.installed()}; offshelf.service.server from {server.__file__}")
try:
    import torch

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"torch.cuda.is_available(): {torch.cuda.is_available()}")
except Exception as err:  # noqa: BLE001  context only
    print(f"torch: {err!r}")
EOF
}

do_tests() {
    python3 -m pytest -p no:cacheprovider --timeout 100 --continue-on-collection-errors \
        --junitxml "$OUT/tests.xml" -k "$CUDA_TESTS_K" "${CUDA_TESTS[@]}"
}

do_bench() {
    local seconds=${1:-${GPU_BENCH_SECONDS:-5}} sets=() s sampler=""
    for s in ${GPU_BENCH_SET-execution_provider=cuda max_batch_size=32}; do sets+=(--set "$s"); done
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 2 \
            > "$OUT/nvidia-smi.csv" 2>&1 &
        sampler=$!
    fi
    # bench/embed.py unchanged (its main()), with its in-process sessions on CUDA, its server on CUDA (--set
    # execution_provider=cuda), and rows of 32-image calls measured on that server before embed.py stops it
    mkdir -p /tmp/gpu-kit
    cat > /tmp/gpu-kit/embed_gpu.py << 'EOF'
from __future__ import annotations

import os
import pathlib
import sys
import time
import types
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import onnxruntime as ort

from offshelf.clients import Client
from offshelf.protos.inference import grpc_predict_v2_pb2 as oip_pb2
from offshelf.protos.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from offshelf.service.models.loaded_model import read_card
from offshelf.service.models.preprocess import Preprocessor

sys.path.insert(0, str(pathlib.Path.cwd() / "bench"))
import common  # noqa: E402
import embed  # noqa: E402

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
ALLOW_CPU = os.environ.get("GPU_ALLOW_CPU") == "1"
LAST_SERVICE_ROW = "(f) service OIP UINT8 pixels, c=16"
state: dict = {"providers": [], "server_models": [], "extra": [], "rows": [], "last": ""}

ort.preload_dlls()


def cuda_session(path, sess_options=None, providers=None, **kwargs):
    """embed.py asks for the CPU provider: CUDA first instead, and say so when it falls back."""
    session = ort.InferenceSession(path, sess_options, providers=[CUDA, CPU], **kwargs)
    state["providers"].append(session.get_providers()[0])
    if session.get_providers()[0] != CUDA and not ALLOW_CPU:
        sys.exit(f"ERROR: the in-process session runs on {session.get_providers()[0]}, not CUDA")
    return session


embed.ort = types.SimpleNamespace(InferenceSession=cuda_session, __version__=ort.__version__)


def batched_row(name, call, per_call, concurrency, seconds, pid):
    """embed.service_row for calls of `per_call` images each: images/s and CPU per image count them all; p50 and
    p99 are per call."""

    def worker(w):
        end, durations = time.perf_counter() + seconds, []
        while time.perf_counter() < end:
            begun = time.perf_counter()
            call(w * 1009 + len(durations))
            durations.append(time.perf_counter() - begun)
        return durations

    cpu, started = embed.process_cpu_seconds(pid), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        durations = [d for ds in pool.map(worker, range(concurrency)) for d in ds]
    wall = time.perf_counter() - started
    return embed.row(name, per_call * len(durations), durations, wall, embed.process_cpu_seconds(pid) - cpu)


def rows_of_32(server, seconds):
    """Embed calls of 32 JPEGs and OIP ModelInfer calls of 32 FP32 tensors, at concurrency 1 and 4."""
    jpegs, version_dir = state["jpegs"], state["version_dir"]
    pre = Preprocessor(read_card(version_dir).preprocessing, 10**8)
    tensors = [pre(jpeg).astype("<f4").tobytes() for jpeg in jpegs[:64]]
    batches = [b"".join(tensors[(start + k) % len(tensors)] for k in range(32)) for start in (0, 32)]
    pid, rows = server.process.pid, []
    with Client(server.address, timeout=120) as client, grpc.insecure_channel(server.address) as channel:
        oip = oip_grpc.GRPCInferenceServiceStub(channel)

        def embed_32(i):
            images = [jpegs[(32 * i + k) % len(jpegs)] for k in range(32)]
            client.embed(images, model=embed.MODEL, outputs=["embedding"])

        def infer_32(i):
            request = oip_pb2.ModelInferRequest(model_name=embed.MODEL)
            request.inputs.add(name="image", datatype="FP32", shape=[32, 3, 224, 224])
            request.outputs.add(name="embedding")
            request.raw_input_contents.append(batches[i % 2])
            oip.ModelInfer(request, timeout=120)

        for call in (embed_32, infer_32):
            call(0)  # warm
        for c in (1, 4):
            rows.append(batched_row(f"(g) service Embed, 32 JPEGs per call, c={c}", embed_32, 32, c, seconds, pid))
        for c in (1, 4):
            rows.append(batched_row(f"(h) service OIP FP32, 32 tensors per call, c={c}", infer_32, 32, c, seconds, pid))
    return rows


class GpuServer(common.ServerProcess):
    """embed.py's server; before embed.py stops it (after its last row): what it runs on, and the 32-image rows."""

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None and state["last"] == LAST_SERVICE_ROW:
            try:
                metrics = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
                state["server_models"] = [m for m in metrics.splitlines() if m.startswith("offshelf_model_info{")]
                state["extra"] = rows_of_32(self, state["seconds"])
            except Exception as err:  # noqa: BLE001  the rows before stand; say what went wrong
                print(f"ERROR: the 32-image rows: {err!r}", file=sys.stderr)
        return super().terminate(timeout)


embed.ServerProcess = GpuServer
original_service_row = embed.service_row
original_service_rows = embed.service_rows
original_in_process_rows = embed.in_process_rows


def service_row(name, *args):
    result = original_service_row(name, *args)
    state["last"] = name
    print(f"  {name}: {result['ips']:.1f} images/s, p50 {result['p50']:.2f} ms", flush=True)
    return result


def service_rows(args, version_dir, jpegs):
    state.update(jpegs=jpegs, version_dir=version_dir, seconds=args.seconds)
    rows = original_service_rows(args, version_dir, jpegs) + state["extra"]
    if not state["extra"]:
        print(f"NOTE: no 32-image rows: they run after embed.py's row {LAST_SERVICE_ROW!r}", file=sys.stderr)
    state["rows"] += rows
    return rows


def in_process_rows(version_dir, jpegs, seconds):
    rows = original_in_process_rows(version_dir, jpegs, seconds)
    for r in rows:
        print(f"  {r['name']}: {r['ips']:.1f} images/s, p50 {r['p50']:.2f} ms", flush=True)
    state["rows"] += rows
    return rows


embed.service_row, embed.service_rows, embed.in_process_rows = service_row, service_rows, in_process_rows

started = time.perf_counter()
embed.main()
print(
    f"\nOn this run: in-process sessions on {sorted(set(state['providers']))} (embed.py's header says 'CPU "
    f"provider': rows (a) and (b+a) ran on these); the server's models: {state['server_models'] or 'unknown'}"
)
wanted = [
    "(a) onnxruntime in-process FP32, batch 1",
    "(a) onnxruntime in-process FP32, batch 32",
    "(c) service Embed, c=1",
    "(c) service Embed, c=32",
    "(g) service Embed, 32 JPEGs per call, c=1",
    "(g) service Embed, 32 JPEGs per call, c=4",
    "(e) service OIP FP32 tensors, c=1",
    "(e) service OIP FP32 tensors, c=16",
    "(h) service OIP FP32, 32 tensors per call, c=1",
    "(h) service OIP FP32, 32 tensors per call, c=4",
]
by_name = {r["name"]: r for r in state["rows"]}
print("\nGPU summary (p50 per call)\n\n| measurement | images/s | p50 ms |\n|---|--:|--:|")
for name in wanted:
    if name in by_name:
        print(f"| {name} | {by_name[name]['ips']:.1f} | {by_name[name]['p50']:.2f} |")
print(f"\nbench: {time.perf_counter() - started:.0f} s")
EOF
    local rc=0
    python3 /tmp/gpu-kit/embed_gpu.py --repo .gpu/repo --images .gpu/photos --seconds "$seconds" "${sets[@]}" || rc=$?
    if [[ -n $sampler ]]; then kill "$sampler" 2> /dev/null || true; fi
    return $rc
}

# What the installed packages need: $SITE first on PYTHONPATH (onnxruntime-gpu there, before the machine's CPU-only
# onnxruntime of the same module name), and the CUDA 13 and cuDNN libraries of the nvidia-* wheels next to torch on
# the loader's path (onnxruntime.preload_dlls looks next to itself, in $SITE, then in the loader's paths); the
# system's in /lib/x86_64-linux-gnu come after them. Once per process tree.
use_site() {
    [[ ${GPU_KIT_ENV:-} == "$SITE" ]] && return 0
    local purelib libs="" d
    purelib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for d in "$purelib"/nvidia/*/lib; do
        if [[ -d $d ]]; then libs="$libs${libs:+:}$d"; fi
    done
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+${libs:+:}$LD_LIBRARY_PATH}"
    export GPU_KIT_ENV=$SITE
}

RC=0
# step NAME CAP ARGS...: `bash gpu.sh ARGS` under timeout (which kills its whole process group, servers included),
# at most CAP seconds and never past the budget; prints the step's exit code and seconds.
step() {
    local name=$1 cap=$2 left limit begun
    shift 2
    left=$((BUDGET - SECONDS - 5))
    limit=$((cap < left ? cap : left))
    STEP_RC=0
    if ((limit < 10)); then
        echo "== $name: skipped: the ${BUDGET} s budget is spent"
        STEP_RC=8
        return 0
    fi
    echo
    echo "== $name (limit ${limit} s; ${SECONDS} s since the start)"
    begun=$SECONDS
    timeout -k 5 "$limit" bash "$SELF" "$@" || STEP_RC=$?
    if ((STEP_RC == 124 || STEP_RC == 137)); then
        echo "-- $name: TIMED OUT after $((SECONDS - begun)) s (exit $STEP_RC; the kit exits 8 for it)"
        STEP_RC=8 # not 124: the device tool reads 124 as its own limit
    else
        echo "-- $name: exit $STEP_RC, $((SECONDS - begun)) s"
    fi
}

main() {
    SECONDS=0
    echo "GPU kit: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores, in $PWD; log: $OUT/gpu.log"
    if [[ ! -f $MODEL_DIR/model.onnx || ! -d .gpu/photos ]]; then
        echo "ERROR: this call must carry .gpu/repo and .gpu/photos (the exported efficientnet-lite0, 64 JPEGs)"
        return 2
    fi
    step install 150 install
    if ((STEP_RC != 0)); then return "$STEP_RC"; fi

    use_site
    step check 90 check
    local check_rc=$STEP_RC
    step tests 120 tests # also when CUDA does not work: test_cuda_check names a driver too old for CUDA 13
    ((STEP_RC == 0)) || RC=$STEP_RC
    if ((check_rc != 0)) && [[ ${GPU_ALLOW_CPU:-} != 1 ]]; then
        echo "GPU kit: CUDA does not work here (see the check step): no bench"
        return "$check_rc"
    fi

    # bench/embed.py's 20 rows and 4 of 32-image calls, plus about 90 s of start-up (sessions, the server, cuDNN's
    # algorithm searches): rows are shortened to fit what is left of the budget
    local left=$((BUDGET - SECONDS - 15)) per_row
    per_row=$(python3 -c "print(max(1.0, min(${GPU_BENCH_SECONDS:-5}, ($left - 90) / 24)))")
    step "bench ($per_row s per row)" $((left + 5)) bench "$per_row"
    ((STEP_RC == 0)) || RC=$STEP_RC
    echo
    echo "GPU kit: done in ${SECONDS} s, exit $RC"
    return "$RC"
}

case "${1:-all}" in
    install) do_install ;;
    check) use_site && do_check ;;
    tests) use_site && do_tests ;;
    bench) use_site && do_bench "${2:-}" ;;
    all)
        main 2>&1 | tee -a "$OUT/gpu.log"
        exit "${PIPESTATUS[0]}"
        ;;
    *)
        echo "usage: bash bench/gpu.sh [install|check|tests|bench]" >&2
        exit 2
        ;;
esac
exit 0
