#!/usr/bin/env bash
# Creates .venv with the local CPU torch build first, then everything else
# under a constraint that stops pip from swapping torch for a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

# open3d links against libusb-1.0 at import time.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing libusb-1.0-0 (needed by open3d)"
        (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1) || \
            (apt-get update -qq >/dev/null && apt-get install -y -qq libusb-1.0-0 >/dev/null)
    else
        echo "[setup] error: open3d needs the system library libusb-1.0." >&2
        echo "        install it first, e.g.: sudo apt-get install libusb-1.0-0" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
# The machine's pip config lists extra local indexes that print a warning per
# missing package; keep the log readable.
pip_q() {
    local log rc=0
    log=$(mktemp)
    "$VENV/bin/python" -m pip install -q "$@" >"$log" 2>&1 || rc=$?
    grep -v "is ignored: it is neither" "$log" || true
    rm -f "$log"
    return $rc
}
if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
    echo "[setup] installing torch==$TORCH_VERSION"
    pip_q "torch==$TORCH_VERSION"
fi
echo "[setup] installing gs_dfd and its dependencies"
pip_q -c constraints.txt -e ".[dev]"
# Refuse to go on with a CUDA torch pulled in by some dependency.
"$VENV/bin/python" - <<'PYEOF'
import sys, torch
if torch.version.cuda is not None and not torch.cuda.is_available():
    sys.exit(f"[setup] error: a CUDA torch build ({torch.__version__}) was installed on a machine without CUDA")
print(f"[setup] torch {torch.__version__} ready")
PYEOF
