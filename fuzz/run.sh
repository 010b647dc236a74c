#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each) and reports what it found.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs cargo-fuzz (installed here if missing). cargo-fuzz asks for nightly compiler flags;
# RUSTC_BOOTSTRAP lets this machine's stable toolchain accept them. A crash is saved under
# fuzz/artifacts/TARGET/; copy it into fuzz/regressions/TARGET/ so that
# tests/fuzz_regressions.rs replays it in CI from then on.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config key sharing)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  cp -n regressions/"$target"/* "corpus/$target/" 2>/dev/null || true
  echo "--- $target: ${seconds}s"
  if cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" 2>"$target.log"; then
    grep -E "^#[0-9]+.*(DONE|pulse)" "$target.log" | tail -1 || true
    echo "$target: no crash"
  else
    tail -20 "$target.log"
    echo "$target: CRASH, see fuzz/artifacts/$target/"
  fi
done
