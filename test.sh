#!/usr/bin/env bash
# The project's test command: sets up .venv when missing (env.sh), checks the code with ruff
# (pyproject.toml), then runs the pytest suite on the CPU, offline. Extra arguments go to pytest
# (e.g. `bash test.sh -k rewards`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ./env.sh
source ./scripts/cpu_env.sh
ruff check --quiet trainer eval infer scripts tests
python -m pytest -q tests "$@"
