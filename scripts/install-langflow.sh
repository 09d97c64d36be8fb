#!/usr/bin/env bash
# Install the real Langflow server (pinned) into its own venv, .venv-langflow, for the tests in
# tests/test_langflow_*.py. Langflow pins hundreds of packages; a separate venv keeps them from
# touching the project's own pins. uv resolves it in about 30 s (plain pip backtracks for over
# ten minutes). Idempotent: a stamp file records the installed version.
#
#   bash scripts/install-langflow.sh            # or: make langflow
#   LANGFLOW_VENV=/elsewhere bash scripts/install-langflow.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${LANGFLOW_VENV:-.venv-langflow}"
VERSION="${LANGFLOW_VERSION:-1.13.0}"
STAMP="$VENV/.langflow-$VERSION-stamp"

if [ -f "$STAMP" ] && [ -x "$VENV/bin/langflow" ]; then
    echo "langflow $VERSION: already installed in $VENV"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || { echo "need $PYTHON on PATH (or: PYTHON=python3 $0)"; exit 1; }
started=$(date +%s)
echo "langflow $VERSION: installing into $VENV with uv (about 30 s and 1.8 GB on first install)..."
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv
"$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" "langflow==$VERSION"
"$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('langflow') == '$VERSION'"
touch "$STAMP"
echo "langflow $VERSION: installed in $VENV in $(( $(date +%s) - started )) s"
