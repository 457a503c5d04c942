#!/usr/bin/env bash
# The GPU check: the whole chain (prepare, teacher, teacher_seq, extract, student, student_seq,
# multicondition, pseudo_labels, pseudo_label, report) at the full-scale model sizes (hparams/large.yaml's
# 12 x 256 conformer), bf16, on one GPU, on a slice of the real bed, then the paper table and one JSON
# line: WERs, seconds, throughput (audio seconds per wall second) and peak GPU memory per stage.
# Sized by estimate for 8 minutes on one H100/H200-class GPU (--budget_s; the JSON's stage seconds say
# where to cut: --teacher_epochs, --student_epochs): the teacher trains from scratch for few epochs, so
# its WERs say that the full-scale path runs on a GPU, not what the large model can reach.
# It needs only what bench/gpu_pack.sh put in gpu_pack/ (carried with the working tree) and the
# machine's own Python (torch, numpy, scipy, sentencepiece, onnx, onnxruntime, h5py, matplotlib,
# tqdm, pytest): no package index, no ../shared, no `pip install -e .` (that would pin torch 2.9.1).
# It installs the pack's wheels the machine lacks into build/gpu_check/site-py<version>/ (bench/gpu_install.py:
# pip --no-index --no-deps --target, or unzipped where pip is missing), and runs the recipe from this checkout
# (PYTHONPATH, with bench/gpu_site/ recording each stage's peak GPU memory).
#   bash bench/gpu_check.sh                                  # on the GPU machine, in the repository root
#   bash bench/gpu_check.sh --device=cpu --sizes=tiny --pack /tmp/gpu_pack_work/pack311   # the simulated
#       # bare-machine run on a CPU (tests/test_gpu_pack.py, with the pack built for this Python)
# Options: --device (cuda:0), --precision (bf16 on a GPU, fp32 on the CPU), --sizes large|tiny (large),
# --pack DIR (gpu_pack), --exp DIR (exp/gpu_check; an earlier one is moved aside to DIR.stale-<n>),
# --budget_s S (480 on a GPU, none on the CPU: the JSON says whether the whole check took longer); any
# other --key=value goes to run.py and its stages, e.g. --teacher_epochs=10 --student_epochs=2.
# GPU_SITE=DIR installs the wheels there instead of build/gpu_check/site-py<version>/; PYTHON=python3.12
# runs another interpreter than python3.
# Writes <exp>/ (paper_table.md/.json/.png: every stage's command, seconds and commit; gpu_check.json:
# the final line).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
start=$(date +%s)
DEVICE=cuda:0 PRECISION= SIZES=large PACK=gpu_pack EXP=exp/gpu_check BUDGET_S= PASS=()
while [ $# -gt 0 ]; do
  case $1 in
    --device=*) DEVICE=${1#*=} ;;   --device) DEVICE=$2; shift ;;
    --precision=*) PRECISION=${1#*=} ;;   --precision) PRECISION=$2; shift ;;
    --sizes=*) SIZES=${1#*=} ;;   --sizes) SIZES=$2; shift ;;
    --pack=*) PACK=${1#*=} ;;   --pack) PACK=$2; shift ;;
    --exp=*) EXP=${1#*=} ;;   --exp) EXP=$2; shift ;;
    --budget_s=*) BUDGET_S=${1#*=} ;;   --budget_s) BUDGET_S=$2; shift ;;
    --*=*) PASS+=("$1") ;;
    *) echo "gpu_check: unknown argument $1 (options: --device --precision --sizes --pack --exp --budget_s, or --key=value for run.py)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$PRECISION" ] || { [[ $DEVICE == cuda* ]] && PRECISION=bf16 || PRECISION=fp32; }
[ -n "$BUDGET_S" ] || { [[ $DEVICE == cuda* ]] && BUDGET_S=480 || BUDGET_S=0; }
PY=${PYTHON:-python3}
[ -f "$PACK/PACK.json" ] || { echo "gpu_check: $PACK/PACK.json not found: build the pack first (bash bench/gpu_pack.sh) or give --pack DIR" >&2; exit 2; }
PACK=$(cd "$PACK" && pwd)
PYV=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PACK_PY=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["python"])' "$PACK/PACK.json")
[ "$PYV" = "$PACK_PY" ] || { echo "gpu_check: $PACK holds wheels for Python $PACK_PY, this is $PYV: rebuild it with PACK_PYTHON=$PYV bash bench/gpu_pack.sh" >&2; exit 2; }
if [[ $DEVICE == cuda* ]]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: --device=$DEVICE but torch sees no CUDA device')"
fi

# ---- the pack's wheels the machine lacks, outside the pack (the machine's own packages are never shadowed)
SITE=${GPU_SITE:-$REPO/build/gpu_check/site-py$PYV}
env -u PYTHONPATH "$PY" bench/gpu_install.py "$PACK/wheels" "$SITE"
export PYTHONPATH=$REPO:$SITE:$REPO/bench/gpu_site${PYTHONPATH:+:$PYTHONPATH}
DATA=$PACK/data
"$PY" - "$DATA" <<'EOF'
import glob, sys
try:
    import hyperpyyaml, jiwer, kaldialign, pyroomacoustics, ruamel.yaml, soundfile, speechbrain, yaml, zstandard  # noqa
    import torch, torchaudio
    from torchaudio.models.decoder import ctc_decoder  # noqa: flashlight-text behind it
except (ImportError, OSError, RuntimeError) as e:  # RuntimeError: torchaudio's, without flashlight-text
    sys.exit(f"gpu_check: {e!r}: the pack's wheels do not import here (PACK.json says what they were built for; "
             "its torchaudio is PyPI's, built for PyPI's CUDA 13 torch)")
if torchaudio.__version__.split("+")[0].rsplit(".", 1)[0] != torch.__version__.split("+")[0].rsplit(".", 1)[0]:
    sys.exit(f"gpu_check: torchaudio {torchaudio.__version__} with torch {torch.__version__}: rebuild the pack "
             f"with PACK_TORCH=<torch's version> bash bench/gpu_pack.sh")
ogg = sorted(glob.glob(f"{sys.argv[1]}/speech/speechocean762/audio/*/*.ogg"))[0]
audio, rate = soundfile.read(ogg)
print(f"gpu_check: torch {torch.__version__}, torchaudio {torchaudio.__version__}, speechbrain {speechbrain.__version__}, "
      f"libsndfile {soundfile.__libsndfile_version__} reads Opus ({len(audio) / rate:.1f} s at {rate} Hz)")
EOF

# ---- the chain
case $SIZES in
  large) SIZE_ARGS=("--arch={d_model: 256, num_layers: 12, d_ffn: 1024, conv_kernel: 31, frontend_channels: 256}"
                    --batch_seconds=300 --num_workers=8 --num_threads=4 --prep_workers=16 --warmup_steps=200
                    --test_batch_size=64
                    --teacher_epochs=15 --student_epochs=2) ;;
  tiny) SIZE_ARGS=("--arch={d_model: 32, num_layers: 2, nhead: 2, d_ffn: 64, conv_kernel: 7, frontend_channels: 8, aux_layer: 1}"
                   --teacher_epochs=1 --student_epochs=1) ;;
  *) echo "gpu_check: --sizes=$SIZES: large or tiny" >&2; exit 2 ;;
esac
if [ -e "$EXP" ]; then  # a check measures a fresh chain; the old one is kept aside, as the recipe does
  n=1; while [ -e "$EXP.stale-$n" ]; do n=$((n + 1)); done
  mv "$EXP" "$EXP.stale-$n" && echo "gpu_check: earlier $EXP moved aside to $EXP.stale-$n"
fi
mkdir -p "$EXP"
KD_GPU_STATS=$(cd "$EXP" && pwd)/gpu_memory.jsonl
export KD_GPU_STATS
RUN=("$PY" bench/gpu_run.py --shared "$DATA" -- --corpus speechocean762 --exp "$EXP" --device="$DEVICE"
     --precision="$PRECISION" --noprogressbar --corpus_dir="$DATA/speech/speechocean762"
     --noise_csv="$DATA/noise/noise.csv" --rir_csv="$DATA/rir/rir.csv" "${SIZE_ARGS[@]}" ${PASS[@]+"${PASS[@]}"})
chain=$(date +%s)
# The teacher from scratch: --init_from reaches every stage that has it, so it goes to these two only
# (the students still start from their teachers); then the rest, on the teacher just trained.
"${RUN[@]}" --stages prepare teacher --init_from=null
"${RUN[@]}" --stages teacher_seq extract student student_seq multicondition pseudo_labels pseudo_label
end=$(date +%s)
"$PY" bench/gpu_check_report.py "$EXP" --device "$DEVICE" --precision "$PRECISION" --sizes "$SIZES" \
  --wall_s $((end - start)) --chain_s $((end - chain)) --budget_s "$BUDGET_S"
