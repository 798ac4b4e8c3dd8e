# Sourced by scripts/label-studio.sh and scripts/iac-tools.sh: one tool, pinned, in a virtualenv of
# its own (its pins must not meet the project's), installed once.
#   tool_venv VENV PACKAGE VERSION CONSTRAINTS EXECUTABLE
# Idempotent: a stamp file naming the installed version marks a finished install, so an install cut
# short (no stamp) is redone. Prints the executable's path on stdout and nothing else.
# CONSTRAINTS (uv pip compile) holds the tool's dependencies exactly: unpinned, a new release
# elsewhere can send pip backtracking through gigabytes of downloads.
tool_venv() {
  local venv="$1" package="$2" version="$3" constraints="$4" executable="$5"
  local stamp="$venv/.edge-inspect-$package-$version"
  if [[ ! -f "$stamp" || ! -x "$venv/bin/$executable" ]]; then
    "${PYTHON:-python3}" -m venv "$venv" >&2
    "$venv/bin/pip" --isolated install --quiet --no-cache-dir --disable-pip-version-check \
      -c "$constraints" "$package==$version" >&2
    touch "$stamp"
  fi
  echo "$venv/bin/$executable"
}
