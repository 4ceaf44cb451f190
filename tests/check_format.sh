#!/usr/bin/env bash
# Every C file follows the repository's .clang-format (run `clang-format -i FILE` to fix).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.c' '*.h' 2>/dev/null || find common conf protocol tls proxy tests -name '*.[ch]')
clang-format --dry-run -Werror "${files[@]}"
echo "${#files[@]} files formatted"
