#!/usr/bin/env bash
# Module boundaries of DESIGN.md that the compiler cannot see (libuv's header sits in the
# system include path): only proxy/ may include <uv.h>; protocol/ uses no TLS library API
# beyond libcrypto; nothing below proxy/ includes proxy headers.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
if grep -rn --include='*.[ch]' -E '#\s*include\s*[<"]uv\.h[>"]' protocol tls conf common; then
    echo "FAIL: <uv.h> included outside proxy/" >&2
    fail=1
fi
if grep -rn --include='*.[ch]' -E '#\s*include\s*[<"]openssl/ssl\.h[>"]' protocol conf common; then
    echo "FAIL: OpenSSL's TLS API used outside tls/ and proxy/" >&2
    fail=1
fi
if grep -rn --include='*.[ch]' -E '#\s*include\s*"px' protocol tls conf common; then
    echo "FAIL: a proxy header included below proxy/" >&2
    fail=1
fi
[[ $fail == 0 ]] && echo "module boundaries hold"
exit $fail
