#!/usr/bin/env bash
# Installs the C/C++ client: libakidb_client.so (+ soname symlinks) and .a, akidb_client.h/.hpp, a CMake package
# (find_package(akidb_client) -> akidb::client) and a pkg-config file (akidb-client). Needs no root: no users, no
# units. Usage (from the repository root): PREFIX=/usr/local DESTDIR= clients/c/install.sh, or make install-client.
# PROFILE=debug installs the debug build instead of building a release one (the tests do that).
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
PROFILE=${PROFILE:-release}
CARGO=${CARGO:-cargo}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' clients/c/Cargo.toml | head -1)
SONAME=libakidb_client.so.0

if [ "$PROFILE" = release ]; then
  "$CARGO" build --release -p akidb-client-c
fi
built=target/$PROFILE
root="$DESTDIR$PREFIX"
install -d "$root/lib" "$root/include" "$root/lib/cmake/akidb_client" "$root/lib/pkgconfig"
install -m 0755 "$built/libakidb_client.so" "$root/lib/libakidb_client.so.$VERSION"
ln -sfn "libakidb_client.so.$VERSION" "$root/lib/$SONAME"
ln -sfn "$SONAME" "$root/lib/libakidb_client.so"
install -m 0644 "$built/libakidb_client.a" "$root/lib/libakidb_client.a"
# Release libraries carry line tables (the workspace's release profile): 41 MB for the .so, 1.9 MB without them.
STRIP=${STRIP:-strip}
if [ "$PROFILE" = release ] && command -v "$STRIP" >/dev/null; then
  "$STRIP" --strip-debug "$root/lib/libakidb_client.so.$VERSION" "$root/lib/libakidb_client.a"
fi
install -m 0644 clients/c/include/akidb_client.h clients/c/include/akidb_client.hpp "$root/include/"
# The CMake files find the prefix from their own location, so a DESTDIR staging tree can be moved as it is.
sed "s/@VERSION@/$VERSION/g; s/@SONAME@/$SONAME/g" clients/c/cmake/akidb_clientConfig.cmake.in \
  > "$root/lib/cmake/akidb_client/akidb_clientConfig.cmake"
sed "s/@VERSION@/$VERSION/g" clients/c/cmake/akidb_clientConfigVersion.cmake.in \
  > "$root/lib/cmake/akidb_client/akidb_clientConfigVersion.cmake"
sed "s#@PREFIX@#$PREFIX#g; s/@VERSION@/$VERSION/g" clients/c/cmake/akidb-client.pc.in > "$root/lib/pkgconfig/akidb-client.pc"
chmod 0644 "$root/lib/cmake/akidb_client/"*.cmake "$root/lib/pkgconfig/akidb-client.pc"
echo "installed the akidb C/C++ client $VERSION under $root"
