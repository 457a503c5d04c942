#!/usr/bin/env bash
# The GPU check: the whole chain on the real bed (speechocean762 in ../shared/data) with
# the full-scale model sizes (hparams/large.yaml, as teacher_large.yaml builds them), bf16, on one
# GPU, then the paper table. Sized for at most 10 minutes on one H100/H200-class GPU: the teacher
# trains from scratch (the CPU bed's warm start is the small model), for few epochs, so its WERs
# say that the full-scale path runs on a GPU, not what the large model can reach.
#   bash bench/gpu_check.sh            # in the repository root, after recipes/KD-Noise/setup.sh
# Writes exp/gpu_check/ (paper_table.md: every stage's command, seconds and commit).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
EXP=${EXP:-exp/gpu_check}
LARGE_ARCH="{d_model: 256, num_layers: 12, d_ffn: 1024, conv_kernel: 31, frontend_channels: 256}"
RUN=(python3 recipes/KD-Noise/run.py --corpus speechocean762 --exp "$EXP" --device=cuda:0 --precision=bf16
     --arch="$LARGE_ARCH" --vocab_size=256 --number_of_epochs=${EPOCHS:-20} --batch_seconds=600
     --num_workers=8 --prep_workers=16 --warmup_steps=500 --test_batch_size=64 --noprogressbar)
start=$(date +%s)
# the teacher from scratch (only its stage: the students still start from their teachers), then the rest
"${RUN[@]}" --stages prepare teacher --init_from=null
"${RUN[@]}"
echo "gpu_check: whole chain in $(( $(date +%s) - start )) s"
python3 - "$EXP" <<'EOF'
import json, sys
t = json.load(open(f"{sys.argv[1]}/paper_table.json"))
print(json.dumps({"bench": "gpu_check", "exp": sys.argv[1],
                  "stage_seconds": {k: v["seconds"] for k, v in t["stages"][sys.argv[1]].items()}}))
EOF
