#!/usr/bin/env bash
# Builds the GPU benchmark kit, the git-ignored folder .gpu/ that bench/gpu.sh and .gpu/PLAN.md use on the lent GPU
# machine. That machine has no network and a call to it carries at most 64 MiB, so everything the kit installs there
# is downloaded here and carried: onnxruntime-gpu (a 244 MiB wheel) travels in parts, one per call.
#   wheels/        the 26 cp312 manylinux wheels offshelf needs beyond the machine's packages (pip download --no-deps)
#   wheels-extra/  nvidia-nvimgcodec-cu13 (carried with the last part)
#   ort-1..ort-5/  `split -b 58M -d -a 2` of onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl (part00 ..
#                  part04, one per folder), and ort.sha256, the whole wheel's sha256
#   repo/          `.venv/bin/offshelf export efficientnet-lite0` (the default export; its card.json's created_at differs)
#   photos/        the first 64 UKBench JPEGs of ../shared/data/ukbench
#   stash.sh, PLAN.md  the stash call and the plan of calls
# and makes sure `.gpu/` is in .git/info/exclude. Every download is checked against its sha256. Idempotent: what
# exists and is complete is skipped. Needs network (pip's index), the repository's .venv (for the export) and
# ../shared/data/ukbench.
# Usage: bash bench/gpu_kit.sh [DIR]  (or GPU_KIT=DIR; default .gpu, relative to the repository root).
# Environment: UKBENCH (the photos' folder, default ../shared/data/ukbench).
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
KIT=${1:-${GPU_KIT:-.gpu}}
UKBENCH=${UKBENCH:-../shared/data/ukbench}
PHOTOS=64
ORT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
ORT_SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7
ORT_PARTS=5

# NAME==VERSION SHA256 FOLDER, one line per wheel (the versions of the repository's .venv).
WHEELS="
annotated-types==0.8.0 f072f4d804ea359e4eaf198b1af7a8b0943881a87f31bb764f8bf219bb9419e0 wheels
faiss-cpu==1.15.1 f2c31b7f2f6647eb76829a5cfe3c398fb9346df9f26b1d4db35269c91eb58c33 wheels
filelock==4.3.2 02a8801bc6b2a80921bf3d7895c63084d53bae2a3c86783adce5ae2b89a1825b wheels
flatbuffers==25.12.19 7634f50c427838bb021c2d66a3d1168e9d199b0607e6329399f04846d42e20b4 wheels
googleapis-common-protos==1.76.0 59e13344a9f3651aa201a03e2bee815a3bf43a4baf1f9ff8a9b62a840ce25fac wheels
grpcio==1.85.3 8266434d54c3442ebdba71d97e6f688b73dd00194bda6e1e35e57272afbd2d73 wheels
grpcio-health-checking==1.85.1 05e1cb0cc69706f89e884d219c9b2b9da4f561c1c610e9987ee4492b9c826ad1 wheels
grpcio-reflection==1.85.1 476f98ec652a5d69f837781ef44c9ff65ebc116e58a6c1dc7712526ac071262a wheels
opentelemetry-api==1.45.2 2cbd737377e710ee740d261c94e93fa0f08e6d037c18f17513cc0a2d94479a34 wheels
opentelemetry-exporter-otlp-common==0.66b2 ace86efb75489f925f1ef809856ae5f0c7db534e4afdc624530222228b1236a5 wheels
opentelemetry-exporter-otlp-proto-common==1.45.2 af483b24217028892f017096731b794b196b785025d2e6808874720fd0b05a80 wheels
opentelemetry-exporter-otlp-proto-grpc==1.45.2 8a48d60835e90536846bd82de487bfbd81bccb5a1b3d0fb82edeea17db07395c wheels
opentelemetry-instrumentation==0.66b2 fa9ccfdab147a14af8107d19ef0a7b5015675273c5adced7a1fc38f28b42ec4c wheels
opentelemetry-instrumentation-grpc==0.66b2 bfa75d83b7080c46e0abd3f66af3be839d27d5c809a25e40a3fa0dd8012af40d wheels
opentelemetry-proto==1.45.2 03a7ca1b43f89fd5b965d5975902bb2515c0c86e2428b456836e9a6149c6235a wheels
opentelemetry-sdk==1.45.2 ff974ea70ee4f1d51e2ec152db37c2b626c7bf82bb3f7d86114fd8704e7199c6 wheels
opentelemetry-semantic-conventions==0.66b2 4cbe61e5f9275d57ab31708446e7938ef4291ebbe6a7fca6f7a629c5acae87d8 wheels
packaging==26.4 81383611a09c1bc0b08b76e0fd5829d7c6824c65b27a6aee339da133f4233ea2 wheels
pydantic==2.14.4 653a2ad9f6d8858529c77c72717d0ea991d6c6837fe683246b2f4b2bbfc3fadc wheels
pydantic-core==2.50.5 470bbc2495367f60d3ca849a8039e4c164701d10637e7743f4427d92651bdb6d wheels
pydantic-settings==2.16.3 d1db16a2d34006323a1b42c0640898da58adfbad7ec30baaa9e2b18aafc08999 wheels
python-dotenv==1.2.4 42269a8a5b3fd54ffa6f3d84b18abed50064717576b4ecf03dc4a55d8aa04fdc wheels
typing-extensions==4.16.0 481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8 wheels
typing-inspection==0.4.5 bc210535442b39e1bf2805e0c7a17dfd6a4ace760c84c7f7d16245d23a6b1c39 wheels
wrapt==2.5.2 092472b7b1494deef40dac5e9f6295013a9d51b112b5fbc4350f64dc2574e46a wheels
nvidia-nvimgcodec-cu13==0.9.0.20 b59bbb223d11065abb7da81e27a2015d15db5d5535639cdc5050e4154a00800a wheels-extra
"

die() {
    echo "gpu_kit: $*" >&2
    exit 1
}

# pip download of one cp312 manylinux x86_64 wheel (the GPU machine's Python) into a folder.
download() { # DIR NAME==VERSION
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "$2" < /dev/null
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Writes stdin to FILE with MODE, leaving FILE (and its time) alone when it already holds the same bytes.
put() { # FILE MODE
    cat > "$TMP/put"
    if cmp -s "$TMP/put" "$1"; then
        rm -f "$TMP/put"
    else
        mv -f "$TMP/put" "$1"
        echo "wrote $1"
    fi
    chmod "$2" "$1"
}

mkdir -p "$KIT"
TMP=$(mktemp -d "$KIT/.kit-tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# 1. the wheels (a file is complete when its sha256 is the listed one).
while read -r spec sha folder; do
    [[ -n $spec ]] || continue
    name=${spec%%==*} version=${spec#*==}
    mkdir -p "$KIT/$folder"
    found=""
    for file in "$KIT/$folder/${name//-/_}-$version-"*.whl; do
        [[ -e $file ]] || continue
        if [[ $(sha256_of "$file") == "$sha" ]]; then
            found=$file
        else
            echo "gpu_kit: $file: sha256 differs, downloading it again"
            rm -f "$file"
        fi
    done
    if [[ -n $found ]]; then
        echo "have $folder/$(basename "$found")"
        continue
    fi
    rm -rf "$TMP/wheel" && mkdir "$TMP/wheel"
    download "$TMP/wheel" "$spec"
    files=("$TMP/wheel"/*.whl)
    ((${#files[@]} == 1)) || die "$spec: expected one wheel, got ${files[*]}"
    [[ $(sha256_of "${files[0]}") == "$sha" ]] || die "$spec: ${files[0]##*/} has sha256 $(sha256_of "${files[0]}"), not $sha"
    mv "${files[0]}" "$KIT/$folder/"
    echo "got $folder/${files[0]##*/}"
done <<< "$WHEELS"

# 2. onnxruntime-gpu in parts: ort-K/partNN with NN = K - 1 (complete when the joined parts have the sha256).
ort_parts() {
    local k
    for ((k = 1; k <= ORT_PARTS; k++)); do
        printf '%s/ort-%d/part%02d\n' "$KIT" "$k" $((k - 1))
    done
}
ort_complete() {
    local part
    while read -r part; do
        [[ -f $part ]] || return 1
    done < <(ort_parts)
    [[ $(ort_parts | xargs cat | sha256sum | cut -d' ' -f1) == "$ORT_SHA256" ]]
}
if ort_complete; then
    echo "have ort-1..ort-$ORT_PARTS (sha256 of the joined parts checked)"
else
    download "$TMP" "onnxruntime-gpu==1.31.1"
    [[ -f $TMP/$ORT_WHEEL ]] || die "pip did not download $ORT_WHEEL"
    got=$(sha256_of "$TMP/$ORT_WHEEL")
    [[ $got == "$ORT_SHA256" ]] || die "$ORT_WHEEL has sha256 $got, not $ORT_SHA256"
    mkdir "$TMP/parts"
    split -b 58M -d -a 2 "$TMP/$ORT_WHEEL" "$TMP/parts/part"
    made=("$TMP/parts"/part*)
    ((${#made[@]} == ORT_PARTS)) || die "split made ${#made[@]} parts, not $ORT_PARTS"
    for ((k = 1; k <= ORT_PARTS; k++)); do
        rm -rf "$KIT/ort-$k"
        mkdir "$KIT/ort-$k"
        mv "$TMP/parts/$(printf 'part%02d' $((k - 1)))" "$KIT/ort-$k/"
    done
    rm -f "$TMP/$ORT_WHEEL"
    ort_complete || die "the parts in $KIT/ort-* do not join to $ORT_WHEEL"
    echo "split $ORT_WHEEL into $KIT/ort-1..ort-$ORT_PARTS"
fi
printf '%s  %s\n' "$ORT_SHA256" "$ORT_WHEEL" | put "$KIT/ort.sha256" 644

# 3. the default export (written whole or not at all: its version folder appears by a rename).
if [[ -f $KIT/repo/efficientnet-lite0/1/model.onnx && -f $KIT/repo/efficientnet-lite0/1/card.json ]]; then
    echo "have repo/efficientnet-lite0/1"
else
    [[ -x .venv/bin/offshelf ]] || die "no .venv/bin/offshelf: make the repository's .venv first (pip install -e .)"
    .venv/bin/offshelf export efficientnet-lite0 --repo "$KIT/repo"
fi

# 4. the first 64 UKBench photos.
mkdir -p "$KIT/photos"
shopt -s nullglob
sources=("$UKBENCH"/ukbench*.jpg)
shopt -u nullglob
((${#sources[@]} >= PHOTOS)) || die "$UKBENCH has ${#sources[@]} UKBench photos, fewer than $PHOTOS"
copied=0
for photo in "${sources[@]:0:PHOTOS}"; do
    if ! cmp -s "$photo" "$KIT/photos/${photo##*/}"; then
        cp -f "$photo" "$KIT/photos/"
        copied=$((copied + 1))
    fi
done
echo "photos: copied $copied of the first $PHOTOS"

# 5. the stash call and the plan, verbatim.
put "$KIT/stash.sh" 755 << 'STASH_EOF'
#!/usr/bin/env bash
# One "stash" call of the GPU kit (see bench/gpu.sh): copies the onnxruntime-gpu part(s) this call carried
# (.gpu/ort-K/part*) to /tmp/ort-parts, and any wheels in .gpu/wheels-extra to /tmp/gpu-wheels. /tmp survives
# between calls only while the machine stays warm (30 s after a call ends): run the calls back to back.
set -euo pipefail
mkdir -p /tmp/ort-parts /tmp/gpu-wheels
cp .gpu/ort-*/part* /tmp/ort-parts/
if compgen -G ".gpu/wheels-extra/*.whl" > /dev/null; then
    cp .gpu/wheels-extra/*.whl /tmp/gpu-wheels/
fi
ls -la /tmp/ort-parts /tmp/gpu-wheels
echo "stashed: $(du -cb /tmp/ort-parts/part* | tail -1 | cut -f1) of 255569273 bytes of the onnxruntime-gpu wheel"
STASH_EOF

put "$KIT/PLAN.md" 644 << 'PLAN_EOF'
# GPU kit: the calls (git-ignored folder, made by hand; see bench/gpu.sh)

Six `run` calls, back to back: the machine, and /tmp with the stashed parts, goes back 30 s after a call ends.
Each call also carries the working tree (tracked + untracked-not-ignored files, about 1.8 MB).

| # | command | carry | carried MiB (+ tree) | timeout_s |
|---|---|---|--:|--:|
| 1 | `bash .gpu/stash.sh` | `.gpu/ort-1`, `.gpu/stash.sh` | 58.00 (59.7) | 90 |
| 2 | `bash .gpu/stash.sh` | `.gpu/ort-2`, `.gpu/stash.sh` | 58.00 (59.7) | 90 |
| 3 | `bash .gpu/stash.sh` | `.gpu/ort-3`, `.gpu/stash.sh` | 58.00 (59.7) | 90 |
| 4 | `bash .gpu/stash.sh` | `.gpu/ort-4`, `.gpu/stash.sh` | 58.00 (59.7) | 90 |
| 5 | `bash .gpu/stash.sh` | `.gpu/ort-5`, `.gpu/wheels-extra`, `.gpu/stash.sh` | 35.62 (37.3) | 90 |
| 6 | `bash bench/gpu.sh` | `.gpu/wheels`, `.gpu/repo`, `.gpu/photos`, `.gpu/ort.sha256` | 50.40 (52.1) | 540 |

Call 6 ends by itself within 465 s (GPU_BUDGET_SECONDS); its files: $OUT/gpu.log, $OUT/tests.xml,
$OUT/nvidia-smi.csv. Shorter: `GPU_BENCH_SECONDS=3 bash bench/gpu.sh`. A rerun of call 6 while the machine is still
warm skips both installs (markers in /tmp/site) and needs only `.gpu/repo` and `.gpu/photos`.

Contents: ort-1..5: `split -b 58M -d -a 2` of onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
(255569273 bytes, sha256 in ort.sha256); wheels: 26 wheels offshelf needs beyond the machine's packages (versions of
/work/main/.venv); wheels-extra: nvidia-nvimgcodec-cu13 0.9.0.20; repo: `offshelf export efficientnet-lite0` (default
export); photos: the first 64 UKBench JPEGs.
PLAN_EOF

# 6. keep .gpu/ out of git.
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
touch "$EXCLUDE"
grep -qxF '.gpu/' "$EXCLUDE" || echo '.gpu/' >> "$EXCLUDE"

echo "kit ready in $KIT: $(du -sh "$KIT" | cut -f1)"
