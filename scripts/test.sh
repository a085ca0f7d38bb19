#!/usr/bin/env bash
# Sets up (with the test tools) and runs the test suite on CPU.
#   bash scripts/test.sh          mypy over trainer/ and gui/, then the whole suite as a fresh clone sees it, with nothing beside the checkout
#                                 (LORA_LOOM_SHARED=none: the tests that read ../shared skip); then, only if
#                                 ../shared exists, once more just those tests (-m shared) with it in place.
#                                 Fails if the type check or either run fails.
#   bash scripts/test.sh ARGS...  one pytest run with these arguments (../shared is read if it is there)
# LORA_LOOM_SHARED=PATH names another shared folder; LORA_LOOM_SHARED=none leaves out the second run.
# LORA_LOOM_WORKERS=N runs the non-browser tests of run 1 on N pytest workers (default 2, one per core here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" "$@"
fi

echo "== type check of trainer/ and gui/ (mypy; finds a misspelt job key or section)"
typed=0
.venv/bin/python -m mypy || typed=$?

echo "== run 1: the whole suite with nothing beside the checkout (LORA_LOOM_SHARED=none)"
# The browser tests one at a time (each drives an app, a Chromium and a trainer, and waits on the page a
# good part of the time), alongside all the others on LORA_LOOM_WORKERS pytest workers (one torch thread
# each). The browser run prints its report once both are done.
first=0
browser=0
workers=${LORA_LOOM_WORKERS:-2}
browser_log=$(mktemp)
LORA_LOOM_SHARED=none "${pytest[@]}" -m browser >"$browser_log" 2>&1 &
browser_pid=$!
LORA_LOOM_SHARED=none "${pytest[@]}" -n "$workers" -m "not browser" || first=$?
wait "$browser_pid" || browser=$?
echo "== run 1, browser tests (-m browser, one at a time, alongside the rest):"
cat "$browser_log"
rm -f "$browser_log"
[ "$browser" = 0 ] || first=$browser

shared=${LORA_LOOM_SHARED:-../shared}
second=0
if [ "$shared" != none ] && [ -d "$shared" ]; then
  shared=$(cd "$shared" && pwd)
  echo "== run 2: the tests that read the shared folder (-m shared), with $shared in place"
  # Named explicitly, a missing file fails instead of skipping; no test selected (exit 5) fails too.
  LORA_LOOM_SHARED="$shared" "${pytest[@]}" -m shared || second=$?
else
  echo "== no shared folder ($shared): its tests skipped in run 1, and there is no run 2"
fi
echo "== mypy: exit $typed; run 1: exit $first; run 2: exit $second"
[ "$typed" = 0 ] && [ "$first" = 0 ] && [ "$second" = 0 ]
