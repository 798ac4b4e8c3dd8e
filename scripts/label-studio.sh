#!/usr/bin/env bash
# Label Studio, the on-site labeling tool the tests run against, in its own virtualenv: it pins
# Django and dozens of other packages that must not meet the project's own dependencies.
#   EDGE_INSPECT_LABEL_STUDIO_VENV: where the virtualenv goes (default: .venv-label-studio in the repo)
#   PYTHON: the interpreter that makes it (default: python3; Label Studio 1.23 wants 3.10 or later)
# Idempotent. Prints the path of the `label-studio` executable and nothing else (scripts/tool-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tool-venv.sh
tool_venv "${EDGE_INSPECT_LABEL_STUDIO_VENV:-$PWD/.venv-label-studio}" label-studio "1.23.2" \
  scripts/label-studio-constraints.txt label-studio
