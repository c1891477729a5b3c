#!/usr/bin/env bash
# Checks a built Linux engine for what its platform package promises:
#   *-gnu.node:  needs no glibc newer than MAX_GLIBC (symbol versions it imports);
#   *-musl.node: links musl only (no libc.so.6, no ld-linux, no GLIBC_ symbol versions).
# Prints its size, the libraries it needs and its newest glibc symbol version.
# Usage: scripts/check-linux-binary.sh FILE.node...
set -euo pipefail

MAX_GLIBC=2.17

for file in "$@"; do
  needed=$(readelf -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
  newest_glibc=$(readelf -V -W "$file" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1 || true)
  echo "$file: $(stat -c %s "$file") bytes; needs: $needed; newest glibc symbol: ${newest_glibc:-none}"
  case "$file" in
    *-gnu.node)
      if [ "$(printf '%s\n' "$newest_glibc" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]; then
        echo "FAIL: $file needs glibc $newest_glibc, more than $MAX_GLIBC" >&2
        exit 1
      fi
      ;;
    *-musl.node)
      if [ -n "$newest_glibc" ] || [[ " $needed " == *" libc.so.6 "* || "$needed" == *ld-linux* ]]; then
        echo "FAIL: $file links glibc" >&2
        exit 1
      fi
      [[ " $needed " == *" libc.so "* ]] || { echo "FAIL: $file does not link musl's libc.so" >&2; exit 1; }
      ;;
  esac
done
