#!/usr/bin/env bash
# Checks the systemd units with `systemd-analyze verify` and prints the `systemd-analyze security` exposure score.
# The units name /usr/local/bin/akidbd; verify needs an executable there, so a copy pointing at /bin/true is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "verify-units: systemd-analyze is missing (apt-get install systemd)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp systemd/akidbd.service systemd/akidbd.socket "$tmp/"
sed -i 's#/usr/local/bin/akidbd#/bin/true#; s#/usr/local/bin/akictl#/bin/true#' "$tmp/akidbd.service"
systemd-analyze verify --man=no "$tmp/akidbd.socket" "$tmp/akidbd.service"
echo "systemd-analyze verify: OK"
systemd-analyze security --offline=yes "$tmp/akidbd.service" | tail -1
