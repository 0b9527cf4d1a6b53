#!/usr/bin/env bash
# The DPO baseline of the paper's ablation (docs/original.md §1.3, §4.1), through ms-swift.
#
#   bash train_dpo.sh                        # no GPU, no arguments: the embedded default (tiny model, a preference
#                                           # set built offline from its own answers, a few DPO steps)
#   PREFERENCE_DATA=output/preference/set NPROC_PER_NODE=8 bash train_dpo.sh   # a cluster
#
# Environment (all optional):
#   MODEL_PRESET     ms-swift model type of the architecture (default qwen2_5_omni; rows of trainer/presets.py)
#   MODEL            checkpoint (hub id or path); default: the preset's real checkpoint on GPUs, its tiny
#                    warm-started twin on the CPU
#   PREFERENCE_DATA  a directory written by `python -m scripts.dataset_building.preference build`
#                    (dpo.jsonl, sft.jsonl and their _val files)
#   DATASET_PATH     else an hf_format set with chosen/rejected columns (default the original's
#                    yuantuo666/MMLU_FULL-full_train_dpo_hf_format.catm2ram2.v1); CHOSEN_TYPE / REJECTED_TYPE
#                    pick chosen_<type> / rejected_<type> columns as the original did (default am2);
#                    MAX_AUDIO_SECONDS (default 60, 0: no limit) stops on longer clips, DROP_LONG_AUDIO=1 drops them
#   PROMPT_MODALITY  a | t (default a: the speech prompt); PROMPT_TYPE (default systhink)
#   NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   torchrun layout (default: all GPUs)
#   DEEPSPEED        zero2 | zero3 | none (default on GPUs: the preset's, zero3 for qwen3_omni_moe, else zero2)
#   WORLD_BATCH_SIZE rows per optimizer step over all GPUs (default 64; batch 1 per GPU)
#   OUTPUT_DIR       run directory (default output/dpo/dpo_<date>); an existing one is resumed only with
#                    RESUME=1, never overwritten. run.json in it records the inputs (data, model, preset, prompts)
#                    once the data is prepared; a resume with other inputs is refused.
#   RESUME=1         continue OUTPUT_DIR from its newest complete checkpoint (an incomplete one, left by a
#                    kill during a save, is skipped and named); a complete run trains nothing and exits 0.
#                    One run at a time per OUTPUT_DIR: another is refused (docs/reliability.md)
#   MAX_STEPS        stop after this many optimizer steps
#   GPU_MEMORY_GB    GPU size for the memory plan (default: read from the GPU; on a CPU machine no plan is made)
#   DRY_RUN=1        print the memory plan and the commands, and exit
# Extra arguments go to ms-swift as flags (e.g. --loss_type ipo --beta 0.1 --num_train_epochs 1).
KIND=dpo exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/preference_launcher.sh" "$@"
