#!/usr/bin/env bash
# Evaluation (docs/original.md §6): the paper's Table 1 layout, MMSU(A) MMSU(T) OBQA(A) OBQA(T) Avg(A) MRR.
#
#   bash eval.sh                  # no GPU, no arguments: the tiny preset (warm-started base) and the latest
#                                 # embedded GRPO checkpoint (if any), the small offline set, all four modes
#   bash eval.sh MODEL [BASE]     # a cluster: VoiceBench MMSU and OBQA (audio, text), CUHK MMSU (audio with
#                                 # the question as text), LibriSpeech WER
# Environment: OUT (default output/eval), BACKEND (auto|vllm|transformers), MAX_NEW_TOKENS, BATCH_SIZE,
# EXTRACTOR (rule|xfinder), XFINDER_MODEL, MRR_REFERENCE, and on a cluster MMSU_PATH, OBQA_PATH,
# CUHK_MMSU_PATH, LIBRISPEECH_PATH; VLLM_GPU_MEMORY_UTILIZATION (default 0.45), and MODEL_PRESET and GPU_MEMORY_GB
# for the memory plan of the vLLM engine (a GPU machine or GPU_MEMORY_GB set: stops before any download when the
# engine cannot fit).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
source ./env.sh
OUT=${OUT:-output/eval}
common=(--out "$OUT" --backend "${BACKEND:-auto}" --extractor "${EXTRACTOR:-rule}")
[ -z "${XFINDER_MODEL:-}" ] || common+=(--xfinder_model "$XFINDER_MODEL")
[ -z "${MRR_REFERENCE:-}" ] || common+=(--mrr_reference "$MRR_REFERENCE")

if [ $# -eq 0 ]; then
    source ./scripts/cpu_env.sh
    embedded=$(python -m scripts.recipes.embedded)
    base=$(sed -n 's/^model=//p' <<< "$embedded" | tail -n 1)
    data=$(sed -n 's/^dataset=//p' <<< "$embedded" | tail -n 1)
    models=("$base")
    ckpt=$(ls -td output/grpo/*/checkpoint-* 2>/dev/null | head -n 1 || true)
    [ -n "$ckpt" ] && models+=("$ckpt")
    for model in "${models[@]}"; do
        echo "== $model =="
        python -m eval.qa --model "$model" --dataset "MMLU=$data" --split test --max_items "${MAX_ITEMS:-16}" \
            --max_new_tokens "${MAX_NEW_TOKENS:-64}" --batch_size "${BATCH_SIZE:-8}" "${common[@]}"
    done
    exit 0
fi

model=$1
base=(); [ $# -ge 2 ] && base=(--base_model "$2")

# ---- memory plan (docs/memory.md §4): the vLLM engine on a GPU machine or with GPU_MEMORY_GB; stops here ----
if [ "${BACKEND:-auto}" != transformers ]; then
    me=eval.sh; source ./scripts/launcher_env.sh   # MODEL_PRESET (default qwen2_5_omni), launcher_memory_plan
    launcher_memory_plan eval 1 --vllm_gpu_memory_utilization "${VLLM_GPU_MEMORY_UTILIZATION:-0.45}" \
        --fraction_name VLLM_GPU_MEMORY_UTILIZATION --vllm_max_model_len 6400 --vllm_max_num_seqs "${BATCH_SIZE:-16}" \
        --max_completion_length "${MAX_NEW_TOKENS:-1000}"
    # the engine's settings (trainer.engine.vllm_engine_kwargs: the original's evaluation, the preset's limits)
fi
python -m eval.qa --model "$model" "${base[@]}" --modes audio text asr text_base \
    --dataset "MMSU=${MMSU_PATH:-yuantuo666/VB_MMSU-full_3074_hf_format.v0}" \
    --dataset "OBQA=${OBQA_PATH:-yuantuo666/VB_OBQA-full_455_hf_format.v0}" --split "${SPLIT:-train}" \
    --max_new_tokens "${MAX_NEW_TOKENS:-1000}" --batch_size "${BATCH_SIZE:-16}" "${common[@]}"
python -m eval.qa --model "$model" "${base[@]}" --modes audio --audio_with_text \
    --dataset "CUHK_MMSU=${CUHK_MMSU_PATH:-yuantuo666/MMSU-full_5k_hf_format.v0}" --split "${SPLIT:-train}" \
    --max_new_tokens "${MAX_NEW_TOKENS:-1000}" --batch_size "${BATCH_SIZE:-16}" "${common[@]}"
python -m eval.asr --model "$model" "${base[@]}" --dataset "${LIBRISPEECH_PATH:-yuantuo666/LIBRISPEECH-test_hf_format.v1}" \
    --split "${SPLIT:-train}" --out "$OUT" --backend "${BACKEND:-auto}"
