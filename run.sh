#!/usr/bin/env bash
# Set up (once) and run pyro_vae.  Usage:
#   bash run.sh train [pyro-vae train arguments]   # the default: a VAE on the bundled digits
#   bash run.sh test  [pytest arguments]           # the test suite
#   bash run.sh <any pyro-vae command> [...]       # e.g. bash run.sh components
#
# The first call makes .venv/ and installs the project into it.  PyTorch is installed first,
# pinned to $PYRO_VAE_TORCH (default 2.13.0, a CPU build on the machines this project is
# developed on); the library itself accepts any torch >= 2.1, so with PYRO_VAE_TORCH=skip an
# already-installed torch is kept (make the venv with --system-site-packages yourself).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${PYRO_VAE_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.pyro_vae-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if [ "${PYRO_VAE_TORCH:-2.13.0}" != skip ] && ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "run.sh: installing torch==${PYRO_VAE_TORCH:-2.13.0} into $VENV" >&2
    "$VENV/bin/python" -m pip install -q "torch==${PYRO_VAE_TORCH:-2.13.0}"
  fi
  echo "run.sh: installing pyro_vae and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$stamp"
fi
cmd=${1:-train}
shift || true
case "$cmd" in
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  *) exec "$VENV/bin/pyro-vae" "$cmd" "$@" ;;
esac
