#!/usr/bin/env bash
# Evaluation (docs/original.md §6): the paper's Table 1 layout, MMSU(A) MMSU(T) OBQA(A) OBQA(T) Avg(A) MRR.
#
#   bash eval.sh                  # no GPU, no arguments: the newest embedded GRPO checkpoint (if any) and the
#                                 # warm-started tiny base of its preset (else of MODEL_PRESET), the small
#                                 # offline set, all four modes
#   bash eval.sh MODEL [BASE]     # a cluster: VoiceBench MMSU and OBQA (audio, text), CUHK MMSU (audio with
#                                 # the question as text), LibriSpeech WER
# Environment: OUT (default output/eval; one eval.qa at a time per OUT), BACKEND (auto|vllm|transformers),
# MAX_NEW_TOKENS, BATCH_SIZE, EXTRACTOR (rule|xfinder), XFINDER_MODEL, MRR_REFERENCE, MODEL_PRESET (no arguments,
# no checkpoint; with GPU_MEMORY_GB, the memory plan of the vLLM engine), and on a cluster MMSU_PATH, OBQA_PATH,
# CUHK_MMSU_PATH, LIBRISPEECH_PATH; VLLM_GPU_MEMORY_UTILIZATION (default 0.45). On a GPU machine or with
# GPU_MEMORY_GB set, the plan stops the evaluation before any download when the vLLM engine cannot fit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
source ./env.sh
OUT=${OUT:-output/eval}
common=(--out "$OUT" --backend "${BACKEND:-auto}" --extractor "${EXTRACTOR:-rule}")
[ -z "${XFINDER_MODEL:-}" ] || common+=(--xfinder_model "$XFINDER_MODEL")
[ -z "${MRR_REFERENCE:-}" ] || common+=(--mrr_reference "$MRR_REFERENCE")

if [ $# -eq 0 ]; then
    # the newest embedded GRPO checkpoint (of any preset), beside the warm-started base of its own preset
    # (without a checkpoint: the base of MODEL_PRESET, else of the default preset)
    source ./scripts/cpu_env.sh
    ckpt=$(ls -td output/grpo/*/checkpoint-* 2>/dev/null | grep -E '/checkpoint-[0-9]+$' | head -n 1 || true)
    if [ -n "$ckpt" ]; then
        embedded=$(python -m scripts.recipes.embedded --preset_of "$ckpt")
    else
        embedded=$(python -m scripts.recipes.embedded ${MODEL_PRESET:+--model_type "$MODEL_PRESET"})
    fi
    preset=$(sed -n 's/^model_type=//p' <<< "$embedded" | tail -n 1)
    base=$(sed -n 's/^model=//p' <<< "$embedded" | tail -n 1)
    data=$(sed -n 's/^dataset=//p' <<< "$embedded" | tail -n 1)
    models=("$base")
    [ -n "$ckpt" ] && models+=("$ckpt")
    echo "== preset $preset: its warm-started tiny base${ckpt:+ and the newest GRPO checkpoint $ckpt} =="
    for model in "${models[@]}"; do
        echo "== $model =="
        python -m eval.qa --model "$model" --model_type "$preset" --dataset "MMLU=$data" --split test \
            --max_items "${MAX_ITEMS:-16}" --max_new_tokens "${MAX_NEW_TOKENS:-64}" --batch_size "${BATCH_SIZE:-8}" \
            "${common[@]}"
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
