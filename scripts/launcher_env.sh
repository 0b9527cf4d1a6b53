# Sourced by the launchers (train_grpo.sh, scripts/preference_launcher.sh) from the repository root, with
# `me` set to the launcher's name: the checks of numeric settings (before anything is loaded), the
# environment (.venv through env.sh; a dry run only activates an existing one), allocator and tokenizer
# settings, and NPROC_PER_NODE (default: the GPUs nvidia-smi lists, 0 without any).

# launcher_fail MESSAGE: the launcher's one-line error, exit status 2.
launcher_fail() { echo "${me:-launcher}: $*" >&2; exit 2; }

# launcher_whole NAME MIN [MAX]: the variable NAME, when set, must be a whole number in [MIN, MAX].
launcher_whole() {
    local name=$1 min=$2 max=${3:-} value=${!1-}
    [ -n "$value" ] || return 0
    [[ $value =~ ^[0-9]+$ ]] && [ ${#value} -le 9 ] && [ $((10#$value)) -ge "$min" ] \
        && { [ -z "$max" ] || [ $((10#$value)) -le "$max" ]; } \
        || launcher_fail "$name must be a whole number >= $min${max:+ and <= $max}, got '$value'"
}
launcher_whole NPROC_PER_NODE 0
launcher_whole NNODES 1
launcher_whole NODE_RANK 0
launcher_whole MASTER_PORT 1 65535
launcher_whole MAX_STEPS 1
launcher_whole WORLD_BATCH_SIZE 1
launcher_whole BATCH_SIZE_PER_GPU 1
case "${DEEPSPEED:-zero2}" in
    none|zero0|zero1|zero2|zero3|zero2_offload|zero3_offload) ;;
    *) [ -f "$DEEPSPEED" ] || launcher_fail "DEEPSPEED must be none, zero0-zero3, zero2_offload, zero3_offload or a json file, got '$DEEPSPEED'";;
esac
case "${RESUME:-0}" in 0|1) ;; *) launcher_fail "RESUME must be 0 or 1, got '$RESUME'";; esac
case "${DRY_RUN:-0}" in 0|1) ;; *) launcher_fail "DRY_RUN must be 0 or 1, got '$DRY_RUN'";; esac

if [ "${DRY_RUN:-0}" = 1 ] && [ -x .venv/bin/python ]; then
    source .venv/bin/activate
else
    source ./env.sh
fi
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True} TOKENIZERS_PARALLELISM=false

gpus=0
if [ -n "${CUDA_VISIBLE_DEVICES-unset}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$gpus}
MODEL_PRESET=${MODEL_PRESET:-qwen2_5_omni}   # trainer.presets.DEFAULT_PRESET (tests/test_data_and_launcher.py checks)

# launcher_preflight ARGS...: `python -m trainer.run_state preflight`, the launcher's one question to Python
# (input and run-directory checks, the checkpoint to resume, the preset's facts, the model on the hub); sets
# `checkpoint` (empty: start at step 0), `prepared` (1: the data is ready), `preset_checkpoint` and
# `preset_vllm` (1: vLLM serves it), and the preset's launch settings `preset_vllm_fraction`,
# `preset_vllm_tensor_parallel`, `preset_vllm_limit_mm`, `preset_max_length`, `preset_deepspeed`. A resume of a run that is complete exits 0 here
# (the reason printed).
launcher_preflight() {
    local plan
    plan=$(python -m trainer.run_state preflight --launcher "$me" --output_dir "$OUTPUT_DIR" \
           --resume "${RESUME:-0}" --dry_run "${DRY_RUN:-0}" "$@") || exit 2
    checkpoint=$(launcher_get run_state:checkpoint "$plan")
    prepared=$(launcher_get run_state:prepared "$plan")
    preset_checkpoint=$(launcher_get run_state:preset_checkpoint "$plan")
    preset_vllm=$(launcher_get run_state:preset_vllm "$plan")
    preset_vllm_fraction=$(launcher_get run_state:preset_vllm_fraction "$plan")
    preset_vllm_tensor_parallel=$(launcher_get run_state:preset_vllm_tensor_parallel "$plan")
    preset_vllm_limit_mm=$(launcher_get run_state:preset_vllm_limit_mm "$plan")
    preset_max_length=$(launcher_get run_state:preset_max_length "$plan")
    preset_deepspeed=$(launcher_get run_state:preset_deepspeed "$plan")
    [ "$(launcher_get run_state:complete "$plan")" != 1 ] || exit 0
    launcher_lock "$@"
}

# ---- one run per folder (trainer.run_state): launcher_lock ARGS... takes the lock of OUTPUT_DIR/.run.lock on
# descriptor 9, which this launcher and the commands it starts hold until they end (the kernel drops it when
# they die: a folder left by a killed run resumes), then checks the folder again under the lock (`checkpoint`,
# `prepared`). Another run on the folder is refused in one line naming its PID and host. A dry run takes no
# lock; nodes other than NODE_RANK 0 share rank 0's folder and lock.
launcher_lock() {
    if [ "${DRY_RUN:-0}" = 1 ] || [ "${NODE_RANK:-0}" != 0 ]; then return 0; fi
    local plan
    mkdir -p "$OUTPUT_DIR" && exec 9>>"$OUTPUT_DIR/.run.lock" || launcher_fail "cannot write $OUTPUT_DIR/.run.lock"
    plan=$(python -m trainer.run_state lock --fd 9 --pid $$ --launcher "$me" --output_dir "$OUTPUT_DIR" \
           --resume "${RESUME:-0}" "$@") || exit 2
    checkpoint=$(launcher_get run_state:checkpoint "$plan")
    prepared=$(launcher_get run_state:prepared "$plan")
    [ "$(launcher_get run_state:complete "$plan")" != 1 ] || exit 0
}
# ---- end of the run-folder lock ----

# launcher_get KEY TEXT: the value of the last line `KEY=value` of TEXT (a Python step's answer).
launcher_get() { sed -n "s/^$1=//p" <<< "$2" | tail -n 1; }

# launcher_has_flag FLAG ARGS...: whether FLAG is among ARGS (the extra arguments).
launcher_has_flag() {
    local flag=$1 a
    shift
    for a in "$@"; do [ "$a" = "$flag" ] && return 0; done
    return 1
}

# launcher_show CMD...: the command, copy-pastable.
launcher_show() { printf '+'; printf ' %q' "$@"; printf '\n'; }

# launcher_memory_plan KIND GPUS ARGS...: the memory plan (docs/memory.md §4) of a cluster launch, when a GPU is
# present (its size from nvidia-smi) or GPU_MEMORY_GB is set: prints the per-GPU table and where each download
# comes from, and stops (exit 2) with the plan's one-line error when the run cannot fit, before any download or
# data preparation. ARGS: the launch command itself (the plan reads the ms-swift flags it knows, the last wins).
# A cluster launch builds no talker (ENABLE_AUDIO_OUTPUT=0, ms-swift's switch: TARS never speaks; it saves the
# Qwen2.5-Omni talker and token2wav, 1.76 B parameters, 3.3 GiB per GPU); ENABLE_AUDIO_OUTPUT=1 builds it.
launcher_memory_plan() {
    local kind=$1 world=$2 size=${GPU_MEMORY_GB:-}
    shift 2
    export ENABLE_AUDIO_OUTPUT=${ENABLE_AUDIO_OUTPUT:-0}
    if [ -z "$size" ] && command -v nvidia-smi >/dev/null 2>&1; then
        size=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 || true)
        [ -z "$size" ] || size=$(awk -v mib="$size" 'BEGIN { printf "%.2f", mib / 1024 }')
    fi
    [ -n "$size" ] || return 0
    python -m trainer.memory_plan preflight --launcher "$me" --kind "$kind" --preset "$MODEL_PRESET" \
        --gpu "$size" --gpus "$world" --use_hf "${USE_HF:-0}" --audio_output "$ENABLE_AUDIO_OUTPUT" "$@" || exit 2
}
