#!/usr/bin/env bash
# Checks that the client SDK installs on its own: a fresh venv in a temp dir, `pip install ./client` (from a clean copy),
# `import nann_client` works, and torch (and the server-side `nann` package) are NOT importable. Prints OK.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nann-client-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m venv "$TMP/venv"
# install from a clean copy so no build/ or egg-info is written into the source tree
mkdir "$TMP/src"
cp "$ROOT/client/pyproject.toml" "$TMP/src/"
[ -f "$ROOT/client/README.md" ] && cp "$ROOT/client/README.md" "$TMP/src/"
cp -r "$ROOT/client/nann_client" "$TMP/src/nann_client"
find "$TMP/src" -name __pycache__ -prune -exec rm -rf {} +
"$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check "$TMP/src"
# run from the temp dir so the repository's own packages are not on sys.path
cd "$TMP"
"$TMP/venv/bin/python" - <<'PY'
import importlib.util
import sys

import nann_client
from nann_client import AsyncNannClient, NannClient, RetrievalResult  # noqa: F401

assert "site-packages" in nann_client.__file__, f"imported from the source tree: {nann_client.__file__}"
assert importlib.util.find_spec("torch") is None, "torch is importable in the client-only venv"
assert importlib.util.find_spec("nann") is None, "the server package `nann` is importable in the client-only venv"
assert "torch" not in sys.modules
print(f"nann_client {nann_client.__version__} from {nann_client.__file__}")
PY
echo OK
