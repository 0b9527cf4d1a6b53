#!/usr/bin/env bash
# The body of train_dpo.sh and train_sft.sh (KIND=dpo|sft): the DPO and SFT baselines of the paper's
# ablation (docs/original.md §1.3, §4.1), through ms-swift (`swift rlhf --rlhf_type dpo`, `swift sft`).
# Same conventions as train_grpo.sh; see the header of train_dpo.sh for the environment variables.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KIND=${KIND:?KIND must be dpo or sft}
case "$KIND" in dpo|sft) ;; *) echo "KIND must be dpo or sft, got $KIND" >&2; exit 2;; esac
me="train_$KIND.sh"

source ./scripts/launcher_env.sh
PROMPT_TYPE=${PROMPT_TYPE:-systhink}
PROMPT_MODALITY=${PROMPT_MODALITY:-a}
OUTPUT_DIR=${OUTPUT_DIR:-output/$KIND/${KIND}_$(date +%Y%m%d_%H%M%S)}
[ -z "${MODEL:-}" ] && [ "$NPROC_PER_NODE" = 0 ] && embedded_default=1 || embedded_default=0

# ---- checks before anything is loaded or created: settings, OUTPUT_DIR, the resume point, the model's
# configuration files on the hub the run uses; then the folder's lock (one run per folder) ----
if [ "$embedded_default" = 1 ]; then
    inputs=(--input "MODEL=tiny $MODEL_PRESET twin (embedded default)"
            --input "DATA=preference set of the tiny model (embedded default)")
elif [ -n "${PREFERENCE_DATA:-}" ]; then
    inputs=(--input "MODEL=${MODEL:-the checkpoint of MODEL_PRESET}" --input "DATA=PREFERENCE_DATA=$PREFERENCE_DATA")
else
    inputs=(--input "MODEL=${MODEL:-the checkpoint of MODEL_PRESET}"
            --input "DATA=DATASET_PATH=${DATASET_PATH:-yuantuo666/MMLU_FULL-full_train_dpo_hf_format.catm2ram2.v1} CHOSEN_TYPE=${CHOSEN_TYPE:-am2} REJECTED_TYPE=${REJECTED_TYPE:-am2}")
fi
inputs+=(--input "KIND=$KIND" --input "MODEL_PRESET=$MODEL_PRESET" --input "PROMPT_TYPE=$PROMPT_TYPE"
         --input "PROMPT_MODALITY=$PROMPT_MODALITY")
checks=(--max_steps "${MAX_STEPS:-}")   # the step count asked for (a resume of a complete run trains nothing)
if [ "$embedded_default" = 1 ]; then checks=(--max_steps "${MAX_STEPS:-8}"); else checks+=(--resolve_model "${MODEL:-}"); fi
launcher_preflight "${inputs[@]}" --prompt_type "$PROMPT_TYPE" --prompt_modality "$PROMPT_MODALITY" \
    --modalities a t --model_preset "$MODEL_PRESET" --need_tiny_twin "$embedded_default" "${checks[@]}"

args=()
prepare=()
if [ "$embedded_default" = 1 ]; then
    # ---- embedded default: tiny model, preference set built offline, a few steps on the CPU ----
    source ./scripts/cpu_env.sh
    if [ "${DRY_RUN:-0}" = 1 ]; then
        MODEL="<tiny warm-started $MODEL_PRESET>"
        TRAIN_FILE="<embedded preference set>/$KIND.jsonl"; VAL_FILE="<embedded preference set>/${KIND}_val.jsonl"
    else
        echo "== embedded default: tiny $MODEL_PRESET, preference set from its own answers (cached) =="
        embedded=$(python -m scripts.recipes.embedded_preference --model_type "$MODEL_PRESET")
        MODEL=$(launcher_get model "$embedded"); TRAIN_FILE=$(launcher_get "$KIND" "$embedded")
        VAL_FILE=$(launcher_get "${KIND}_val" "$embedded")
        echo "preference set: $(launcher_get report "$embedded")"
    fi
    args+=(--per_device_train_batch_size 2 --gradient_accumulation_steps 1 --max_steps "${MAX_STEPS:-8}"
           --learning_rate 1e-4 --warmup_ratio 0 --torch_dtype float32 --fp16 false --bf16 false
           --gradient_checkpointing false --logging_steps 1 --save_steps 4 --save_total_limit 2
           --eval_steps "${MAX_STEPS:-8}" --dataloader_num_workers 0 --dataset_num_proc 1 --report_to tensorboard
           --seed 42)
    launcher=(python -m trainer.preference_train "$KIND")
else
    # ---- a cluster: the original's setting (docs/original.md §1.3, §4.1) ----
    [ "$NPROC_PER_NODE" -ge 1 ] || launcher_fail "MODEL given but no GPU found; set NPROC_PER_NODE"
    MODEL=${MODEL:-$preset_checkpoint}
    if [ -n "${PREFERENCE_DATA:-}" ]; then   # the output of `preference build`
        TRAIN_FILE=$PREFERENCE_DATA/$KIND.jsonl; VAL_FILE=$PREFERENCE_DATA/${KIND}_val.jsonl
    else                                     # hf_format with chosen/rejected columns (the original's set)
        DATASET_PATH=${DATASET_PATH:-yuantuo666/MMLU_FULL-full_train_dpo_hf_format.catm2ram2.v1}
        prepare=(python -m scripts.dataset_building.preference from_columns --dataset "$DATASET_PATH"
                 --out "$OUTPUT_DIR/data" --prompt_type "$PROMPT_TYPE" --prompt_modality "$PROMPT_MODALITY"
                 --chosen_type "${CHOSEN_TYPE:-am2}" --rejected_type "${REJECTED_TYPE:-am2}")
        [ -z "${MAX_AUDIO_SECONDS:-}" ] || prepare+=(--max_audio_seconds "$MAX_AUDIO_SECONDS")
        [ "${DROP_LONG_AUDIO:-0}" != 1 ] || prepare+=(--drop_long_audio)
        TRAIN_FILE=$OUTPUT_DIR/data/$KIND.jsonl; VAL_FILE=$OUTPUT_DIR/data/${KIND}_val.jsonl
    fi
    NNODES=${NNODES:-1}
    world=$((NPROC_PER_NODE * NNODES))
    world_batch=${WORLD_BATCH_SIZE:-64}
    if [ $((world_batch % world)) != 0 ]; then
        echo "$me: WORLD_BATCH_SIZE=$world_batch is not divisible by the $world GPUs" >&2; exit 2
    fi
    DEEPSPEED=${DEEPSPEED:-$preset_deepspeed}
    args+=(--per_device_train_batch_size 1 --gradient_accumulation_steps $((world_batch / world))
           --torch_dtype bfloat16 --attn_impl flash_attn --dataloader_num_workers 4 --report_to tensorboard)
    [ "$DEEPSPEED" = none ] || args+=(--deepspeed "$DEEPSPEED")
    [ -z "${MAX_STEPS:-}" ] || args+=(--max_steps "$MAX_STEPS")
    launcher=(torchrun --nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}"
              --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}"
              -m trainer.preference_train "$KIND")
fi

train=("${launcher[@]}" --model "$MODEL" --model_type "$MODEL_PRESET" --dataset "$TRAIN_FILE"
       --val_dataset "$VAL_FILE" --split_dataset_ratio 0 --check_model false --output_dir "$OUTPUT_DIR"
       --add_version false "${args[@]}" "$@")
[ -z "$checkpoint" ] || train+=(--resume_from_checkpoint "$checkpoint")

# ---- memory plan (docs/memory.md §4): a cluster launch on a GPU machine or with GPU_MEMORY_GB; stops here ----
[ "$embedded_default" = 1 ] || launcher_memory_plan "$KIND" "$world" --batch_per_gpu 1 --world_batch "$world_batch" \
    --deepspeed "$DEEPSPEED" --max_audio_seconds "${MAX_AUDIO_SECONDS:-60}" --use_vllm 0 "${train[@]}"

if [ ${#prepare[@]} != 0 ] && [ "$prepared" = 1 ]; then
    echo "= data prepared before (see $(printf '%q' "$OUTPUT_DIR/run.json")), not prepared again:$(printf ' %q' "${prepare[@]}")"
elif [ ${#prepare[@]} != 0 ]; then
    launcher_show "${prepare[@]}"
fi
launcher_show "${train[@]}"
[ "${DRY_RUN:-0}" = 1 ] && exit 0

if [ "$prepared" != 1 ]; then   # the preparation validates before writing; run.json marks the data ready
    [ ${#prepare[@]} = 0 ] || "${prepare[@]}"
    python -m trainer.run_state record --launcher "$me" --output_dir "$OUTPUT_DIR" "${inputs[@]}"
fi
"${train[@]}"

echo
echo "== done =="
echo "checkpoints:  $(ls -d "$OUTPUT_DIR"/checkpoint-* 2>/dev/null | sort -V | tr '\n' ' ')"
echo "logs:         $OUTPUT_DIR/logging.jsonl (TensorBoard: tensorboard --logdir $(printf '%q' "$OUTPUT_DIR/runs"))"
exit 0
