# Sourced by the launchers and test.sh for CPU runs (the embedded default and the tests).
# Offline: nothing is fetched from a model hub; the tiny models run on the CPU even if a GPU is visible.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MODELSCOPE_OFFLINE=1 USE_HF=1
export CUDA_VISIBLE_DEVICES="" TOKENIZERS_PARALLELISM=false
# Allocator: the tiny models' 151k-token logits are allocated and freed several times a step; glibc
# returns such blocks to the kernel each time and the page faults cost as much as the arithmetic.
# jemalloc that keeps freed pages (no decay: a 10 s decay already lost most of the gain) made a
# warm-start SFT step 1.8x faster here (4.0 s -> 2.2 s), at the price of RSS staying at its peak.
# Used when Debian's libjemalloc2 is present (env.sh installs it when run as root); TARS_JEMALLOC=0 skips.
if [ "${TARS_JEMALLOC:-1}" != 0 ]; then
    for _tars_lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2; do
        if [ -f "$_tars_lib" ]; then
            export LD_PRELOAD="$_tars_lib${LD_PRELOAD:+:$LD_PRELOAD}"
            export MALLOC_CONF=${MALLOC_CONF:-retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1,narenas:2}
            break
        fi
    done
    unset _tars_lib
fi
