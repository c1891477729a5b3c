#!/usr/bin/env bash
# Puts napi-rs's glibc 2.17 cross toolchain for one Linux gnu target where
# `napi build --use-napi-cross` looks for it (~/.napi-rs/cross-toolchain/<version>/<target>/),
# so that the binary needs glibc 2.17 at most instead of the build machine's glibc.
# The CLI would fetch it itself, but cannot on every machine: its unpacker (@napi-rs/lzma) needs
# Node.js 22, and it asks for each toolchain package at its own helper's version, which the
# toolchain packages do not all have; this takes each one's newest. Only `npm pack` and `tar`.
# Usage: scripts/fetch-cross-toolchain.sh x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/.."

target=$1
case "$(uname -m)" in
  x86_64) host=x64 ;;
  aarch64 | arm64) host=arm64 ;;
  *) echo "no napi-rs cross toolchain runs on $(uname -m)" >&2; exit 1 ;;
esac
helper_version=$(node -p "require('@napi-rs/cross-toolchain/package.json').version")
dest="$HOME/.napi-rs/cross-toolchain/$helper_version/$target"
if [ -f "$dest/package.json" ]; then
  echo "cross toolchain for $target: $dest (already there)"
  exit 0
fi

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
package="@napi-rs/cross-toolchain-$host-target-${target%%-*}"
package="$package@$(npm view "$package" version)"
(cd "$download" && npm pack --silent "$package" >/dev/null && tar -xzf ./*.tgz)
mkdir -p "$dest"
tar -xJf "$download/package/$target.tar.xz" -C "$dest"
echo "cross toolchain for $target: $dest (from $package)"
