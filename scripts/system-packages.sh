#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages a make target needs, when they are missing.
#   scripts/system-packages.sh demo   mosquitto (the demo's private broker) and its clients
#   scripts/system-packages.sh test   + GStreamer's RTSP server (a real RTSP camera for the tests), openssl
set -euo pipefail
packages=(mosquitto mosquitto-clients)
if [[ "${1:-demo}" == "test" ]]; then
  packages+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-base openssl
             qemu-user)  # an emulated AVX2-only CPU for the self-test tests
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "please install: ${missing[*]} (no apt-get here)" >&2; exit 1
fi
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
