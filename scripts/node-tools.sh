#!/usr/bin/env bash
# The npm tools the tests run, pinned, into .tools/ (no global install):
#   asl-validator: validates the Step Functions state machines the project generates.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .tools/node_modules/.bin/asl-validator ]]; then exit 0; fi
if ! command -v npm >/dev/null; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
npm install --silent --no-audit --no-fund --prefix .tools asl-validator@4 >/dev/null
