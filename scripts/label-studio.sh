#!/usr/bin/env bash
# Label Studio, the on-site labeling tool the tests run against, in its own virtualenv: it pins
# Django and dozens of other packages that must not meet the project's own dependencies.
#   EDGE_INSPECT_LABEL_STUDIO_VENV: where the virtualenv goes (default: .venv-label-studio in the repo)
#   PYTHON: the interpreter that makes it (default: python3; Label Studio 1.23 wants 3.10 or later)
# Idempotent: a stamp file naming the installed version marks a finished install, so an install cut
# short (no stamp) is redone. Prints the path of the `label-studio` executable on stdout and nothing else.
# The exact versions of its dependencies are in scripts/label-studio-constraints.txt (uv pip compile):
# unpinned, a new release elsewhere can send pip backtracking through gigabytes of downloads.
set -euo pipefail
VERSION="1.23.2"
cd "$(dirname "$0")/.."
venv="${EDGE_INSPECT_LABEL_STUDIO_VENV:-$PWD/.venv-label-studio}"
stamp="$venv/.edge-inspect-label-studio-$VERSION"
if [[ ! -f "$stamp" || ! -x "$venv/bin/label-studio" ]]; then
  "${PYTHON:-python3}" -m venv "$venv" >&2
  "$venv/bin/pip" --isolated install --quiet --no-cache-dir --disable-pip-version-check -c scripts/label-studio-constraints.txt "label-studio==$VERSION" >&2
  touch "$stamp"
fi
echo "$venv/bin/label-studio"
