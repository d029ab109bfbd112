#!/usr/bin/env bash
# Installs akidbd, akictl, the ONNX Runtime library, the default model, the config and the systemd units.
# Usage: sudo tools/install.sh [PREFIX]   (default /usr/local; builds release binaries first via make).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-/usr/local}
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it creates the akidb user and installs units)" >&2; exit 1; }
make build
install -d "$PREFIX/bin" "$PREFIX/lib/akidb" /etc/akidb /usr/local/share/akidb/models "$PREFIX/share/doc/akidb"
install -m 0755 target/release/akidbd target/release/akictl "$PREFIX/bin/"
install -m 0644 target/onnxruntime/libonnxruntime.so.1.32.0 "$PREFIX/lib/akidb/"
cp -r models/all-MiniLM-L6-v2 /usr/local/share/akidb/models/
install -m 0644 README.md "$PREFIX/share/doc/akidb/"
# The C/C++ client library, headers, CMake package and pkg-config file (also alone: make install-client).
PREFIX="$PREFIX" DESTDIR= clients/c/install.sh
if [ ! -f /etc/akidb/akidb.toml ]; then
  sed -e "s#^dir = \"models/all-MiniLM-L6-v2\"#dir = \"/usr/local/share/akidb/models/all-MiniLM-L6-v2\"#" \
      -e "s#^\\# library_path = .*#\\# The CPU library installed with akidbd. For a tensorrt or cuda device, remove this line: akidbd then\\n\\# searches for an ONNX Runtime with that provider (README \"Running on Jetson\"; akidbd --doctor).\\nlibrary_path = \"$PREFIX/lib/akidb/libonnxruntime.so.1.32.0\"#" \
      config/akidb.toml > /etc/akidb/akidb.toml
fi
getent group akidb >/dev/null || groupadd --system akidb
getent passwd akidb >/dev/null || useradd --system --gid akidb --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin akidb
sed "s#/usr/local/bin/#$PREFIX/bin/#g" systemd/akidbd.service > /etc/systemd/system/akidbd.service
install -m 0644 systemd/akidbd.socket /etc/systemd/system/akidbd.socket
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "installed; start with: systemctl enable --now akidbd.socket akidbd.service"
else
  echo "installed (no running systemd here: units copied, not enabled)"
fi
