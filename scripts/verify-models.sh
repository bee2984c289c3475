#!/usr/bin/env bash
# Model-check every Promela model in models/ with spin (`make verify`).
#
# Each models/NAME.pml is checked as written: spin must find no error. Every line of its header
# of the form `counterexample: -DVARIANT` names a buggy variant (the protocol as it was before a
# fix); spin must find a counterexample for it, and its trail is printed so the failure can be read.
# A model's `mirrors:` and `mirrors-sha256:` header lines are checked by tests/models/ (a model
# whose mirrored Lua/SQL changed without a new stamp fails the test suite).
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
command -v spin >/dev/null || { echo "spin is not installed (Debian: apt-get install spin)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

check() {  # model, variant flag ('' for the model as written) -> prints "errors: N" line, returns N
  local model=$1 flag=$2
  local dir="$work/$(basename "$model" .pml)${flag:+-${flag#-D}}"
  mkdir -p "$dir" && cp "$model" "$dir/model.pml"
  (cd "$dir" && spin -a ${flag:+"$flag"} model.pml >/dev/null \
     && gcc -O2 -DSAFETY -DVECTORSZ=4096 -o pan pan.c 2>/dev/null \
     && ./pan -m2000000 -c1 > pan.out 2>&1) || true
  local errors
  errors=$(grep -o 'errors: [0-9]*' "$dir/pan.out" | awk '{print $2}' || true)
  grep -E 'State-vector|states, stored|assertion violated|invalid end state' "$dir/pan.out" | sed 's/^/    /' || true
  if [ -n "$errors" ] && [ "$errors" -gt 0 ] && [ -f "$dir/model.pml.trail" ]; then
    echo "    counterexample trail (last steps):"
    (cd "$dir" && spin -t -p -g model.pml 2>/dev/null | grep -E '^ *[0-9]+:' | tail -n 12 | sed 's/^/      /') || true
  fi
  echo "${errors:-unknown}" > "$dir/errors"
}

for model in models/*.pml; do
  echo "== $model"
  check "$model" ""
  errors=$(cat "$work/$(basename "$model" .pml)/errors")
  if [ "$errors" = "0" ]; then echo "  ok: no error in any interleaving"; else echo "  FAIL: $errors error(s)"; status=1; fi
  for flag in $(sed -n 's/.*counterexample: *\(-D[A-Z_0-9]*\).*/\1/p' "$model"); do
    echo "  -- variant $flag (the protocol before its fix)"
    check "$model" "$flag"
    errors=$(cat "$work/$(basename "$model" .pml)-${flag#-D}/errors")
    if [ "$errors" != "unknown" ] && [ "$errors" -gt 0 ]; then
      echo "  ok: spin found the counterexample"
    else
      echo "  FAIL: the buggy variant $flag passed; the model does not capture its bug"; status=1
    fi
  done
done
exit $status
