# Sourced by the launchers (train_grpo.sh, scripts/preference_launcher.sh) from the repository root:
# the environment (.venv through env.sh; a dry run only activates an existing one), allocator and
# tokenizer settings, and NPROC_PER_NODE (default: the GPUs nvidia-smi lists, 0 without any).
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
MODEL_PRESET=${MODEL_PRESET:-qwen2_5_omni}
