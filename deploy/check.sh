#!/usr/bin/env bash
# Checks everything under deploy/ with real validators, installing them itself:
#   hadolint (Dockerfiles), the Compose Specification's JSON Schema (compose.yaml),
#   kubernetes-validate against Kubernetes 1.33 schemas, strictly (kubernetes/*.yaml),
#   promtool check config / check rules / test rules (prometheus/).
# The Grafana dashboard's and the alert rules' metric names are checked against a running
# pipeline's /metrics by tests/deploy.rs (part of the test suite).
set -euo pipefail
cd "$(dirname "$0")"

tools="${RISKPIPE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/riskpipe-tools}"
venv="$tools/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt

if ! command -v promtool >/dev/null 2>&1; then
  # Debian's prometheus package ships promtool.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; }
  else
    echo "deploy/check.sh: promtool is missing; install Debian's prometheus package (as root)" >&2
    exit 1
  fi
fi

echo "== hadolint"
"$venv/bin/hadolint" Dockerfile Dockerfile.gpu
echo "== compose.yaml against the Compose Specification"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
echo "== Kubernetes manifests (1.33, strict)"
"$venv/bin/kubernetes-validate" --kubernetes-version 1.33.0 --strict kubernetes/*.yaml
echo "== Grafana dashboard is JSON"
"$venv/bin/python" -m json.tool grafana/dashboards/riskpipe.json >/dev/null
echo "== promtool"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/alerts.yml
(cd prometheus && promtool test rules alerts.test.yml)
echo "deploy checks passed"
