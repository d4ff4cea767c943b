#!/usr/bin/env bash
# On the device machine: keep part I of the pack.sh payload in /tmp/igrec-device until check.sh runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
hold=${IGREC_DEVICE_HOLD:-/tmp/igrec-device}
mkdir -p "$hold"
cp ".device/$1"/* "$hold/"
ls -la "$hold"
