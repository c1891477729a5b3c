#!/usr/bin/env bash
# Builds the engine as it ships, for one target: release profile (LTO, stripped), into OUT_DIR
# (default target/dist/bindings-TARGET/, the layout `napi artifacts` reads).
#   Linux gnu:  linked against glibc 2.17 (napi-rs's cross toolchain), so it loads on any glibc
#               2.17+ system, not only on ones as new as the build machine.
#   Linux musl: linked against musl by musl-gcc (Debian/Ubuntu package musl-tools), on a build
#               machine of the same CPU; without it the output would link glibc.
#   macOS, Windows: the host toolchain.
# Usage: scripts/build-dist.sh TARGET [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

target=$1
out=${2:-target/dist/bindings-$target}
flags=()
case "$target" in
  *-linux-gnu)
    scripts/fetch-cross-toolchain.sh "$target"
    flags+=(--use-napi-cross)
    # That toolchain's gcc 4.8 does not define __ARM_ARCH, which ring's arm64 assembly needs.
    if [[ $target == aarch64-* ]]; then export TARGET_CFLAGS="${TARGET_CFLAGS:-} -D__ARM_ARCH=8"; fi
    ;;
  *-linux-musl)
    command -v musl-gcc >/dev/null || { echo "musl-gcc not found: install musl-tools" >&2; exit 1; }
    env_target=$(echo "$target" | tr 'a-z-' 'A-Z_')
    export "CARGO_TARGET_${env_target}_LINKER=musl-gcc" "CC_${target//-/_}=musl-gcc"
    # Rust's musl target unwinds with libgcc_s, which Alpine's libgcc package provides at run
    # time; musl-gcc searches only musl's folders, so it is shown the build machine's copy alone.
    libgcc_dir="$PWD/target/musl-libgcc"
    mkdir -p "$libgcc_dir"
    ln -sf "$(gcc -print-file-name=libgcc_s.so.1)" "$libgcc_dir/libgcc_s.so.1"
    export RUSTFLAGS="${RUSTFLAGS:-} -L native=$libgcc_dir"
    ;;
esac
rustup target add "$target" >/dev/null 2>&1 || rustup target list --installed | grep -qx "$target"
npx napi build --platform --release --target "$target" --no-js --output-dir "$out" ${flags[@]+"${flags[@]}"}
ls -l "$out"/*.node
