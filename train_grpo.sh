#!/usr/bin/env bash
# TARS GRPO training (paper section 3; docs/original.md §1.3, §2).
#
#   bash train_grpo.sh                      # no GPU, no arguments: the embedded default (tiny model,
#                                           # small MMLU speech set, SFT warm start, a few GRPO steps)
#   MODEL=Qwen/Qwen2.5-Omni-7B DATASET_PATH=... NPROC_PER_NODE=8 bash train_grpo.sh   # a cluster
#
# Environment (all optional):
#   MODEL_PRESET     ms-swift model type of the architecture (default qwen2_5_omni; the presets are the rows of
#                    trainer/presets.py, e.g. qwen2_audio)
#   MODEL            checkpoint (hub id or path); default: the preset's real checkpoint on GPUs, its tiny
#                    warm-started twin on the CPU
#   DATASET_PATH     hf_format dataset (local save_to_disk path or hub id)
#   REWARD_FUNCS     reward list; the original's names work too (reward_format reward_xfinder
#                    hsorm.hidden_state_sim reward_align_audio_to_text); default: all four TARS rewards
#   PROMPT_MODALITY  a | t | mixed (default mixed); PROMPT_TYPE systhink | cot | simple | none
#   NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   torchrun layout (default: all GPUs)
#   DEEPSPEED        zero2 | zero3 | none (default on GPUs: the preset's, zero3 for qwen3_omni_moe, else zero2)
#   WORLD_BATCH_SIZE rollouts per optimizer step over all GPUs (default 64); BATCH_SIZE_PER_GPU (default 2)
#   OUTPUT_DIR       run directory (default output/grpo/tars_<date>); an existing one is resumed only with
#                    RESUME=1, never overwritten. run.json in it records the inputs (dataset, model, preset,
#                    prompts, rewards) once the data is prepared; a resume with other inputs is refused.
#   RESUME=1         continue OUTPUT_DIR from its newest complete checkpoint (an incomplete one, left by a
#                    kill during a save, is skipped and named); a complete run trains nothing and exits 0.
#                    One run at a time per OUTPUT_DIR: another is refused (docs/reliability.md)
#   MAX_STEPS        stop after this many optimizer steps
#   MAX_AUDIO_SECONDS longest clip accepted (default 60, 0: no limit); longer clips stop the data preparation
#   DROP_LONG_AUDIO=1 leave clips longer than that out instead (their count and keys are printed)
#   GPU_MEMORY_GB    GPU size for the memory plan (default: read from the GPU; on a CPU machine no plan is made)
#   DRY_RUN=1        print the memory plan and the commands, and exit
# Extra arguments go to ms-swift / TARS as flags (e.g. --target_layers 11-20 --num_train_epochs 1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
me=train_grpo.sh

source ./scripts/launcher_env.sh
PROMPT_MODALITY=${PROMPT_MODALITY:-mixed}
PROMPT_TYPE=${PROMPT_TYPE:-systhink}
OUTPUT_DIR=${OUTPUT_DIR:-output/grpo/tars_$(date +%Y%m%d_%H%M%S)}
read -r -a reward_funcs <<< "${REWARD_FUNCS:-tars_format tars_accuracy tars_representation tars_behaviour}"
[ -z "${MODEL:-}" ] && [ "$NPROC_PER_NODE" = 0 ] && embedded_default=1 || embedded_default=0

# ---- checks before anything is loaded or created: settings, reward names, OUTPUT_DIR, the resume point, the
# model's configuration files on the hub the run uses; then the folder's lock (one run per folder) ----
if [ "$embedded_default" = 1 ]; then
    inputs=(--input "MODEL=tiny $MODEL_PRESET twin (embedded default)"
            --input "DATASET_PATH=${DATASET_PATH:-small MMLU speech set (embedded default)}")
else
    inputs=(--input "MODEL=${MODEL:-the checkpoint of MODEL_PRESET}"
            --input "DATASET_PATH=${DATASET_PATH:-yuantuo666/MMLU_FULL-full_train_hf_format.merged.v1}")
fi
inputs+=(--input "MODEL_PRESET=$MODEL_PRESET" --input "PROMPT_TYPE=$PROMPT_TYPE"
         --input "PROMPT_MODALITY=$PROMPT_MODALITY" --input "REWARD_FUNCS=${reward_funcs[*]}")
plugins=0; launcher_has_flag --external_plugins "$@" && plugins=1
checks=(--max_steps "${MAX_STEPS:-}")   # the step count asked for (a resume of a complete run trains nothing)
if [ "$embedded_default" = 1 ]; then checks=(--max_steps "${MAX_STEPS:-15}"); else checks+=(--resolve_model "${MODEL:-}"); fi
launcher_preflight "${inputs[@]}" --reward_funcs "${reward_funcs[@]}" --plugins_given "$plugins" \
    --prompt_type "$PROMPT_TYPE" --prompt_modality "$PROMPT_MODALITY" --model_preset "$MODEL_PRESET" \
    --need_tiny_twin "$embedded_default" "${checks[@]}"

args=()
prepare_extra=()
if [ "$embedded_default" = 1 ]; then
    # ---- embedded default: everything offline on the CPU ----
    source ./scripts/cpu_env.sh
    if [ "${DRY_RUN:-0}" = 1 ]; then
        MODEL="<tiny warm-started $MODEL_PRESET>"; DATASET_PATH=${DATASET_PATH:-"<small MMLU speech set>"}
    else
        echo "== embedded default: tiny $MODEL_PRESET, small MMLU speech set, SFT warm start (cached) =="
        embedded=$(python -m scripts.recipes.embedded --model_type "$MODEL_PRESET")
        MODEL=$(launcher_get model "$embedded")
        DATASET_PATH=${DATASET_PATH:-$(launcher_get dataset "$embedded")}
    fi
    args+=(--num_generations 4 --per_device_train_batch_size 8 --gradient_accumulation_steps 1
           --max_completion_length 40 --max_steps "${MAX_STEPS:-15}" --learning_rate 1e-4 --warmup_ratio 0
           --logging_steps 1 --save_steps 5 --save_total_limit 3 --torch_dtype float32 --fp16 false --bf16 false
           --use_vllm false --gradient_checkpointing false --dataloader_num_workers 0 --dataset_num_proc 1
           --dump_rollouts "$OUTPUT_DIR/rollouts.jsonl" --report_to tensorboard --seed 42
           --val_dataset "$OUTPUT_DIR/data/val.jsonl" --eval_strategy steps --eval_steps "${MAX_STEPS:-15}"
           --per_device_eval_batch_size 8 --num_generations_eval 4)
    prepare_extra=(--val_split test --val_rows 8)
    launcher=(python -m trainer.grpo)
else
    # ---- a cluster: the paper's setting (docs/original.md §1.3, §2.9) ----
    [ "$NPROC_PER_NODE" -ge 1 ] || launcher_fail "MODEL given but no GPU found; set NPROC_PER_NODE"
    MODEL=${MODEL:-$preset_checkpoint}
    DATASET_PATH=${DATASET_PATH:-yuantuo666/MMLU_FULL-full_train_hf_format.merged.v1}
    NNODES=${NNODES:-1}
    world=$((NPROC_PER_NODE * NNODES))
    per_gpu=${BATCH_SIZE_PER_GPU:-2}
    world_batch=${WORLD_BATCH_SIZE:-64}
    if [ $((world_batch % (world * per_gpu))) != 0 ]; then
        echo "train_grpo.sh: WORLD_BATCH_SIZE=$world_batch is not divisible by GPUs x BATCH_SIZE_PER_GPU = $((world * per_gpu))" >&2
        exit 2
    fi
    DEEPSPEED=${DEEPSPEED:-$preset_deepspeed}
    args+=(--per_device_train_batch_size "$per_gpu" --gradient_accumulation_steps $((world_batch / (world * per_gpu)))
           --per_device_eval_batch_size 4 --torch_dtype bfloat16 --attn_impl flash_attn --dataloader_num_workers 4
           --max_length "$preset_max_length" --report_to tensorboard --log_completions true --eval_steps 100
           --embedder Qwen/Qwen3-Embedding-0.6B)   # the paper's behaviour embedder (hub; MiniLM offline on the CPU)
    if [ "$preset_vllm" = 1 ]; then
        args+=(--use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization "$preset_vllm_fraction"
               --vllm_tensor_parallel_size "$preset_vllm_tensor_parallel"
               --vllm_max_model_len "$preset_max_length" --vllm_limit_mm_per_prompt "$preset_vllm_limit_mm"
               --sleep_level 0)
    else   # the GPU stack's vLLM does not serve this architecture: rollouts with transformers
        args+=(--use_vllm false)
    fi
    [ "$DEEPSPEED" = none ] || args+=(--deepspeed "$DEEPSPEED")
    [ -z "${MAX_STEPS:-}" ] || args+=(--max_steps "$MAX_STEPS")
    launcher=(torchrun --nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}"
              --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" -m trainer.grpo)
fi

[ -z "${MAX_AUDIO_SECONDS:-}" ] || prepare_extra+=(--max_audio_seconds "$MAX_AUDIO_SECONDS")
[ "${DROP_LONG_AUDIO:-0}" != 1 ] || prepare_extra+=(--drop_long_audio)
prepare=(python -m trainer.data grpo --dataset "$DATASET_PATH" --out "$OUTPUT_DIR/data"
         --prompt_type "$PROMPT_TYPE" --prompt_modality "$PROMPT_MODALITY" "${prepare_extra[@]}")
train=("${launcher[@]}" --prompt_modality "$PROMPT_MODALITY" --model "$MODEL" --model_type "$MODEL_PRESET"
       --dataset "$OUTPUT_DIR/data/grpo.jsonl" --split_dataset_ratio 0 --check_model false
       --reward_funcs "${reward_funcs[@]}" --output_dir "$OUTPUT_DIR" --add_version false "${args[@]}" "$@")
[ -z "$checkpoint" ] || train+=(--resume_from_checkpoint "$checkpoint")

# ---- memory plan (docs/memory.md §4): a cluster launch on a GPU machine or with GPU_MEMORY_GB; stops here ----
[ "$embedded_default" = 1 ] || launcher_memory_plan grpo "$world" --batch_per_gpu "$per_gpu" \
    --world_batch "$world_batch" --deepspeed "$DEEPSPEED" --max_audio_seconds "${MAX_AUDIO_SECONDS:-60}" \
    --use_vllm "$preset_vllm" "${train[@]}"

if [ "$prepared" = 1 ]; then
    echo "= data prepared before (see $(printf '%q' "$OUTPUT_DIR/run.json")), not prepared again:$(printf ' %q' "${prepare[@]}")"
else
    launcher_show "${prepare[@]}"
fi
launcher_show "${train[@]}"
[ "${DRY_RUN:-0}" = 1 ] && exit 0

if [ "$prepared" != 1 ]; then   # validates everything before writing; run.json marks the data ready
    "${prepare[@]}"
    python -m trainer.run_state record --launcher "$me" --output_dir "$OUTPUT_DIR" "${inputs[@]}"
fi
"${train[@]}"

echo
echo "== done =="
echo "checkpoints:  $(ls -d "$OUTPUT_DIR"/checkpoint-* 2>/dev/null | sort -V | tr '\n' ' ')"
echo "logs:         $OUTPUT_DIR/logging.jsonl (TensorBoard: tensorboard --logdir $(printf '%q' "$OUTPUT_DIR/runs"))"
[ -f "$OUTPUT_DIR/rollouts.jsonl" ] && echo "rollout dump: $OUTPUT_DIR/rollouts.jsonl"
exit 0
