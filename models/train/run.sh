#!/usr/bin/env bash
# Trains and exports riskpipe's models. Makes its venv with pinned packages (venv.sh), builds the
# training set with riskpipe's own feature export (the definitions that score live), trains and
# writes models/*.onnx and models/*.metrics.json.
#
#   run.sh [fraud] [train.py options]   fraud models on the handbook transactions (default)
#   run.sh var [train_var.py options]   the 1-day VaR model on the NASDAQ series
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=$("$here/venv.sh")
mkdir -p "$here/work"
what=fraud
if [ "${1:-}" = fraud ] || [ "${1:-}" = var ]; then
  what=$1
  shift
fi
if [ "$what" = var ]; then
  (cd "$root" && cargo run --release --quiet -- features --config config/market-nasdaq.toml --output "$here/work/market_features.parquet")
  "$python" "$here/train_var.py" --features "$here/work/market_features.parquet" --out "$root/models" "$@"
else
  history=${RISKPIPE_HISTORY:-$root/../shared/data/handbook/transactions.parquet}
  (cd "$root" && cargo run --release --quiet -- features --input "$history" --output "$here/work/features.parquet")
  "$python" "$here/train.py" --features "$here/work/features.parquet" --out "$root/models" "$@"
fi
