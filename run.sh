#!/usr/bin/env bash
# Set-up and entry point for a fresh machine. Two commands do everything:
#   bash run.sh demo    # create/reuse .venv, then run the whole recipe on the tiny preset (CPU, minutes)
#   bash run.sh test    # create/reuse .venv, then run the test suite (offline, CPU)
# Anything after the first word is passed on: `bash run.sh demo --set stage1.mask=false`,
# `bash run.sh test -k mask`, `bash run.sh comalite eval --models base,stage2`.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
# On this CPU image `torch==2.13.0` is a local CPU wheel; elsewhere pip picks the build for your platform
# (see README: GPU users can use environment.yml instead). Pinned so nothing pulls another torch in.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating $VENV with $PY" >&2
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.comalite-installed"
  local want
  want="$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[run.sh] installing dependencies into $VENV (about a minute)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
  fi
}

# Caches stay inside the project; nothing is fetched from the model hub at run time.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export HF_HOME=${HF_HOME:-$PWD/.cache/hf}
export MPLCONFIGDIR=${MPLCONFIGDIR:-$PWD/.cache/matplotlib}
export JUPYTER_CONFIG_DIR=${JUPYTER_CONFIG_DIR:-$PWD/.cache/jupyter}
export IPYTHONDIR=${IPYTHONDIR:-$PWD/.cache/ipython}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$PWD/.cache/numba}
export MPLBACKEND=${MPLBACKEND:-Agg}

cmd=${1:-demo}
shift || true
setup
case "$cmd" in
  demo) exec "$VENV/bin/comalite" demo "$@" ;;
  # Two worker processes, one torch thread each (tests/conftest.py), a test file per worker: the notebooks
  # (run in order, sharing their run folder) stay on one worker while the rest runs on the other core.
  # COMALITE_TEST_WORKERS=0: everything in this one process.
  test) exec "$VENV/bin/python" -m pytest -q -n "${COMALITE_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  setup) ;;
  *) exec "$VENV/bin/$cmd" "$@" ;;
esac
