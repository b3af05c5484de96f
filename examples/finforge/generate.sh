#!/usr/bin/env bash
# Makes the finforge example's data set: a venv with the pinned packages
# (examples/finforge/requirements.txt) in the cache directory, then generate.py --check, which
# writes $RISKPIPE_CACHE/finforge/transactions.parquet (default ~/.cache/riskpipe/finforge) and
# fails if the rows' checksum is not the committed one. Skips the work when that file exists
# with the committed checksum beside it (transactions.parquet.sha256). Test processes call it
# side by side: one generates, the others wait on its lock.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${RISKPIPE_CACHE:-$HOME/.cache/riskpipe}/finforge
want=$(cut -d' ' -f1 "$here/transactions.sha256")
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [ -f "$out/transactions.parquet" ] && [ "$(cat "$out/transactions.parquet.sha256" 2>/dev/null)" = "$want" ]; then
  echo "$out/transactions.parquet: present (rows sha256 $want)"
  exit 0
fi
# The venv lives in the cache too: a test run never writes into the checkout.
venv=${RISKPIPE_CACHE:-$HOME/.cache/riskpipe}/finforge-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"
rm -f "$out/transactions.parquet.sha256"
"$venv/bin/python" "$here/generate.py" --check --out "$out"
echo "$want" > "$out/transactions.parquet.sha256"
