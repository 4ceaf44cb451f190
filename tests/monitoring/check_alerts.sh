#!/usr/bin/env bash
# ctest monitoring.alerts: the example Prometheus configuration and the alerting rules it loads
# are valid (promtool check config also checks the rule files), and every alert fires and stays
# quiet as its unit tests say (promtool test rules).
set -euo pipefail
dir=$(cd "$(dirname "$0")/../../docker/monitoring" && pwd)
promtool=${PROMTOOL:-promtool}
command -v "$promtool" >/dev/null ||
    { echo "promtool is needed (Debian package prometheus; scripts/install-deps test)" >&2; exit 1; }
"$promtool" check config "$dir/prometheus.yml"
"$promtool" test rules "$dir"/tests/*.test.yaml
