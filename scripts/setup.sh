#!/usr/bin/env bash
# Sets up LoRA Loom in ./.venv (idempotent: reinstalls only when the requirements change).
#   bash scripts/setup.sh         the app's dependencies (CPU torch here; see README for GPUs)
#   bash scripts/setup.sh --dev   plus the test tools and Debian's Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
files="requirements.txt"
[ $dev = 1 ] && files="requirements.txt requirements-dev.txt"
want="$(cat $files | sha256sum | cut -c1-16)-$dev"
stamp=.venv/.lora-loom-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && ! { [ $dev = 0 ] && grep -q -- "-1$" "$stamp" 2>/dev/null; }; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  # Only for its CLIP BPE vocabulary file (the tokenizer is built offline from it); --no-deps because its
  # own requirements would pull a CUDA torch.
  .venv/bin/python -m pip install -q --no-deps "open-clip-torch==3.3.0"
  [ $dev = 1 ] && .venv/bin/python -m pip install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
if [ $dev = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "Browser tests need Debian's chromium: sudo apt-get install -y chromium" >&2
  fi
fi
