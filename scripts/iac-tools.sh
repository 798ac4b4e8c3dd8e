#!/usr/bin/env bash
# checkov, the policy scanner the infrastructure template is checked with, in its own virtualenv
# under .tools/: it pins boto3, networkx and dozens of others that must not meet the project's own.
# Idempotent. Prints the path of `checkov` and nothing else (scripts/tool-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tool-venv.sh
tool_venv "$PWD/.tools/checkov-venv" checkov "3.3.30" scripts/checkov-constraints.txt checkov
