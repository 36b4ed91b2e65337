#!/usr/bin/env bash
# Every CUDA code path in one run on a machine with a GPU, in under 8 minutes: a --device cuda search
# (against the same plans on CPU), a trial_batch sweep (1, 4, 16 trials fine-tuned together), the ResNet
# search space on CUDA and an export from it, Ray with 1 vs 0.25 GPU per trial and 1 GPU per batch of 8.
# Figures, with the GPU model, go to the search-gpu section of docs/BENCHMARKS.md.
#   bash benchmarks/gpu.sh            (PYTHON=... to choose the interpreter; extra arguments go to search.py)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! "${PYTHON:-python}" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "benchmarks/gpu.sh: torch sees no GPU here (torch.cuda.is_available() is False)" >&2
    exit 2
fi
PYTHONPATH="$PWD:${PYTHONPATH:-}" exec "${PYTHON:-python}" benchmarks/search.py --parts gpu --speed-trials 8 "$@"
