#!/usr/bin/env bash
# Makes (once) the training venv with the pinned packages of models/train/requirements.txt in
# the cache directory ($RISKPIPE_CACHE/train-venv, default ~/.cache/riskpipe/train-venv) and
# prints its python. Test processes call it side by side: one installs, the others wait.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${RISKPIPE_CACHE:-$HOME/.cache/riskpipe}
venv=$cache/train-venv
mkdir -p "$cache"
exec 9>"$cache/.train-venv.lock"
flock 9
stamp=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet -r "$here/requirements.txt" >&2
  echo "$stamp" > "$venv/.requirements"
fi
echo "$venv/bin/python"
