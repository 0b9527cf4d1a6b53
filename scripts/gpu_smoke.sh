#!/usr/bin/env bash
# The GPU smoke test (docs/memory.md §6): on one GPU, offline (tiny twin, small speech set, wheels already
# installed), a few minutes: the embedded GRPO run in bf16 with colocated vLLM at the memory plan's settings,
# then the vLLM evaluation; writes output/gpu_smoke/<date>/gpu_smoke.json (measured peak memory beside the plan,
# step times). Arguments go to `python -m scripts.gpu_smoke` (--out DIR, --vllm_fraction F).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source ./env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MODELSCOPE_OFFLINE=1 USE_HF=1
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} TOKENIZERS_PARALLELISM=false
exec python -m scripts.gpu_smoke "$@"
