#!/usr/bin/env bash
# Builds gpu_pack/ (git-ignored): everything bench/gpu_check.sh needs on a GPU machine that reaches no
# package index and has no ../shared, to carry there with the working tree (at most 60 MiB):
#   wheels/  pinned wheels of the Python packages the recipe needs beyond that machine's own (it has
#            torch, numpy, scipy, sentencepiece, onnx, onnxruntime, h5py, matplotlib, tqdm, pytest),
#            with their missing dependencies, all --no-deps, for one CPython version;
#   data/    a slice of ../shared/data in its own layout (bench/gpu_pack_data.py): whole speakers of
#            speechocean762 train and test in their original Ogg/Opus, noise clips of every source,
#            measured RIRs of every room;
#   PACK.json what it holds (Python, torchaudio, wheels, data slice, size).
# bench/gpu_check.sh installs the wheels outside it (build/gpu_check/), so the pack stays as built.
# Run here, on a machine with the package index and ../shared/data, in the repository root:
#   bash bench/gpu_pack.sh                                   # CPython 3.12 manylinux wheels, torchaudio 2.11.0
#   PACK_PYTHON=3.11 PACK_DIR=/tmp/gpu_pack_work/pack311 bash bench/gpu_pack.sh
#       # the same list for this machine's Python (the simulated bare-machine run, tests/test_gpu_pack.py):
#       # only the compiled wheels' tags differ
# Settings (environment): PACK_DIR (gpu_pack), PACK_PYTHON (3.12), PACK_TORCH (2.11.0: the GPU machine's
# torch; torchaudio's version must be torch's), PACK_SHARED (../shared/data), PACK_TRAIN_EVERY (2: every
# 2nd training speaker, ~1.5 h), PACK_TEST_EVERY (8: ~0.3 h), PACK_NOISE_PER_SOURCE (6),
# PACK_RIRS_PER_ROOM (12), PACK_LIMIT_MIB (60). The pack is rebuilt from scratch each time.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK_DIR:-gpu_pack}
PY=${PACK_PYTHON:-3.12}
TORCH=${PACK_TORCH:-2.11.0}
SHARED=${PACK_SHARED:-../shared/data}
LIMIT_MIB=${PACK_LIMIT_MIB:-60}
[[ $PY =~ ^3\.[0-9]+$ ]] || { echo "gpu_pack: PACK_PYTHON=$PY: give major.minor, e.g. 3.12" >&2; exit 2; }
[ -d "$SHARED" ] || { echo "gpu_pack: PACK_SHARED=$SHARED not found (the real bed, ../shared/data)" >&2; exit 2; }

# The packages the recipe imports that the GPU machine lacks, and what they need that it lacks too,
# pinned to the versions the project runs with here. Left out on purpose: hf-xet (huggingface_hub
# imports it only to download, which the check never does; 4 MB) and Cython (pyroomacoustics lists
# it but imports it only when built from source).
WHEELS=(
  # torch's audio library, not on the machine. PyPI's Linux build of 2.11.0 links CUDA 13 (libcudart.so.13),
  # as PyPI's torch 2.11.0 does; a torch from another CUDA build needs the machine's own torchaudio.
  "torchaudio==$TORCH"
  speechbrain==1.1.2
  hyperpyyaml==1.2.3 ruamel.yaml==0.18.17 ruamel.yaml.clib==0.2.15 pyyaml==6.0.3
  jiwer==4.0.0 rapidfuzz==3.14.6 click==8.5.1
  soundfile==0.14.0 cffi==2.0.0 pycparser==3.0           # soundfile's wheel bundles libsndfile with Opus
  pyroomacoustics==0.10.1
  zstandard==0.25.0
  flashlight-text==0.0.7
  kaldialign==0.12.0
  joblib==1.6.0 cloudpickle==3.1.3 packaging==26.2        # speechbrain's
  requests==2.34.2 charset-normalizer==3.4.7 idna==3.21 urllib3==2.7.0 certifi==2026.5.20
  huggingface_hub==2.4.0 httpx2==2.17.0 httpcore2==2.17.0 anyio==4.16.0 h11==0.16.0 truststore==0.10.5
  typing-extensions==4.16.0
)
# Platform tags of the compiled wheels: manylinux x86-64 up to glibc 2.28 (every wheel above has one)
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64
           manylinux_2_28_x86_64)

rm -rf "$PACK"
mkdir -p "$PACK/wheels"
echo "gpu_pack: wheels for CPython $PY (torchaudio $TORCH) into $PACK/wheels"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PY" --implementation cp --abi "cp${PY/./}" --abi abi3 --abi none \
  "${PLATFORMS[@]/#/--platform=}" -d "$PACK/wheels" "${WHEELS[@]}" \
  2> >(grep -v "is neither a file nor a directory" >&2)
n=$(ls "$PACK/wheels"/*.whl | wc -l)
[ "$n" -eq "${#WHEELS[@]}" ] || { echo "gpu_pack: $n wheels in $PACK/wheels for ${#WHEELS[@]} pinned packages" >&2; exit 1; }

echo "gpu_pack: data slice of $SHARED into $PACK/data"
python3 bench/gpu_pack_data.py "$SHARED" "$PACK/data" --train-every "${PACK_TRAIN_EVERY:-2}" \
  --test-every "${PACK_TEST_EVERY:-8}" --noise-per-source "${PACK_NOISE_PER_SOURCE:-6}" \
  --rirs-per-room "${PACK_RIRS_PER_ROOM:-12}" >/dev/null

python3 - "$PACK" "$PY" "$TORCH" "$LIMIT_MIB" <<'EOF'
import json, os, sys
pack, py, torch, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def size(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
wheels = sorted(os.listdir(os.path.join(pack, "wheels")))
with open(os.path.join(pack, "data", "slice.json")) as f:
    data = json.load(f)
info = {"python": py, "torchaudio_for_torch": torch, "wheels": wheels, "data": data,
        "mib": {"wheels": round(size(os.path.join(pack, "wheels")) / 2**20, 1),
                "data": round(size(os.path.join(pack, "data")) / 2**20, 1)}}
info["mib"]["total"] = round(sum(info["mib"].values()), 1)
with open(os.path.join(pack, "PACK.json"), "w") as f:
    json.dump(info, f, indent=1)
print(f"gpu_pack: {pack}: {info['mib']['total']} MiB (wheels {info['mib']['wheels']}, data {info['mib']['data']}; "
      f"limit {limit:g}); {len(wheels)} wheels; speech {data['speech']}")
if size(pack) / 2**20 > limit:
    sys.exit(f"gpu_pack: {pack} is {size(pack) / 2**20:.1f} MiB, over the {limit:g} MiB that travels to the GPU "
             "machine: raise PACK_TRAIN_EVERY / PACK_TEST_EVERY or lower PACK_NOISE_PER_SOURCE / PACK_RIRS_PER_ROOM")
EOF
