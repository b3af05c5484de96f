#!/usr/bin/env bash
# Trains and exports riskpipe's fraud models. Makes its own venv with pinned packages, builds the
# training set with riskpipe's own batch feature export, trains, writes models/*.onnx and
# models/*.metrics.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
mkdir -p "$here/work"
history=${RISKPIPE_HISTORY:-$root/../shared/data/handbook/transactions.parquet}
(cd "$root" && cargo run --release --quiet -- features --input "$history" --output "$here/work/features.parquet")
"$here/.venv/bin/python" "$here/train.py" --features "$here/work/features.parquet" --out "$root/models" "$@"
