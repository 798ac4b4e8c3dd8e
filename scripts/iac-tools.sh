#!/usr/bin/env bash
# checkov, the policy scanner the infrastructure template is checked with, in its own virtualenv
# under .tools/: it pins boto3, networkx and dozens of others that must not meet the project's own.
# Idempotent (a stamp names the installed version). Prints the path of `checkov` and nothing else.
# The exact versions of its dependencies are in scripts/checkov-constraints.txt (uv pip compile):
# unpinned, a new release elsewhere can send pip backtracking through gigabytes of downloads.
set -euo pipefail
VERSION="3.3.30"
cd "$(dirname "$0")/.."
venv="$PWD/.tools/checkov-venv"
stamp="$venv/.edge-inspect-checkov-$VERSION"
if [[ ! -f "$stamp" || ! -x "$venv/bin/checkov" ]]; then
  "${PYTHON:-python3}" -m venv "$venv" >&2
  "$venv/bin/pip" --isolated install --quiet --no-cache-dir --disable-pip-version-check -c scripts/checkov-constraints.txt "checkov==$VERSION" >&2
  touch "$stamp"
fi
echo "$venv/bin/checkov"
