#!/usr/bin/env bash
# The miniature of the paper's ablation in one command (docs/miniature.md): stage 1 (text SFT), stage 2 (projector
# and LLM on speech and text, the Whisper encoder frozen), the hearing probe of the start, every arm x seed of
# stage 3 (the same seeds for every arm), the layer-similarity analysis and the report (docs/miniature.md's
# generated region, docs/miniature/results.json and figures).
#
#   bash scripts/miniature/run.sh                          # the full run (seeds 0-5, every arm); writes docs/
#   bash scripts/miniature/run.sh --quick                  # toy size, seed 0, every stage and arm, minutes;
#                                                          # report under $TARS_CACHE/miniature/report-quick/
#   bash scripts/miniature/run.sh --seeds 0,1,2,3,4,5,6 --arms grpo,tars --steps 40
#
# Everything is cached under $TARS_CACHE/miniature/ (stages, hearing probe, arms, layer analysis): rerunning
# regenerates the report from the cache, and a killed run resumes at the first unfinished job. Flags are those of
# `python -m scripts.miniature.pipeline` (--cache_dir, --report_dir, --report_md too).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

source ./env.sh
gpus=0
if [ -n "${CUDA_VISIBLE_DEVICES-unset}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
if [ "$gpus" = 0 ]; then
    source ./scripts/cpu_env.sh
fi
export TOKENIZERS_PARALLELISM=false

# the report names the command as `bash scripts/miniature/run.sh FLAGS...`
exec python -m scripts.miniature.pipeline --launcher 'bash scripts/miniature/run.sh' "$@"
