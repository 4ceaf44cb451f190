#!/usr/bin/env bash
# ctest entry for manifests.kubernetes: installs the pinned validator packages on first use
# (npm ci: exactly package-lock.json), then validates docker/kubernetes/*.yaml (the sidecar
# example) and each subdirectory (central/: the central trust point), each as a set of its own.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node and npm are needed (Debian packages nodejs, npm)" >&2
    exit 1
fi
# Reinstall when the lock file changed since the last install.
installed=node_modules/.package-lock.json
if [[ ! -f $installed || package-lock.json -nt $installed ]]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
exec node validate.mjs "$@"
