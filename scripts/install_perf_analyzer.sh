#!/usr/bin/env bash
# Makes the venv's perf_analyzer (shipped by tritonclient==2.50.0) runnable on Debian 12 / glibc 2.36.
# Idempotent. Needs:  libb64.so.0d (Debian package libb64-0d; apt only when it is missing, root or sudo)
#                     libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12, into the venv; no GPU needed)
# perf_analyzer must then run with LD_LIBRARY_PATH=<venv site-packages>/nvidia/cuda_runtime/lib
# (perf/load.py sets it; `scripts/install_perf_analyzer.sh --print-env` prints the export line).
# See shared/docs/PLATFORM.md, "perf_analyzer".
set -euo pipefail
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PA="$VENV/bin/perf_analyzer"
[ -x "$PY" ] || { echo "no venv at $VENV: run 'make venv' first" >&2; exit 1; }
if [ ! -x "$PA" ]; then
    "$PY" -m pip install -q 'tritonclient[grpc]==2.50.0'
fi
[ -x "$PA" ] || { echo "tritonclient did not install $PA (only its Linux x86-64 wheel ships perf_analyzer)" >&2; exit 1; }

cudart_dir() {
    "$PY" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
paths = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
for p in paths:
    d = os.path.join(p, "cuda_runtime", "lib")
    if os.path.exists(os.path.join(d, "libcudart.so.12")):
        print(d); break
PY
}

if [ "${1:-}" = "--print-env" ]; then
    echo "export LD_LIBRARY_PATH=$(cudart_dir)\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
    exit 0
fi

if [ -z "$(cudart_dir)" ]; then
    "$PY" -m pip install -q nvidia-cuda-runtime-cu12
fi
CUDART=$(cudart_dir)
[ -n "$CUDART" ] || { echo "libcudart.so.12 not found after installing nvidia-cuda-runtime-cu12" >&2; exit 1; }

if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "libb64-0d is missing and this user cannot run apt: ask an admin for 'apt-get install -y libb64-0d'" >&2; exit 1; }
        SUDO="sudo -n"
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libb64-0d
fi

missing=$(LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$PA" | grep 'not found' || true)
if [ -n "$missing" ]; then
    echo "perf_analyzer still lacks libraries:" >&2; echo "$missing" >&2; exit 1
fi
LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PA" --version >/dev/null 2>&1 || \
    LD_LIBRARY_PATH="$CUDART" "$PA" --help >/dev/null 2>&1 || true
echo "perf_analyzer ready: $PA (run it with LD_LIBRARY_PATH=$CUDART)"
