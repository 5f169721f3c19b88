#!/usr/bin/env bash
# Creates the project venv (idempotent) and installs the project, the client SDK and test tools into it.
# Also links the venv's base libpython into <venv>/lib so Triton's Python-backend stub embeds the very
# interpreter the venv was made from (see shared/docs/PLATFORM.md).
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ./client -e '.[dev]'
libdir=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
if [ -e "$libdir/libpython3.11.so.1.0" ]; then
    ln -sf "$libdir/libpython3.11.so.1.0" "$VENV/lib/libpython3.11.so.1.0"
fi
