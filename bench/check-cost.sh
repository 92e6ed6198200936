#!/bin/bash
# Benchmark (not a test): what pr-target's reservation access check costs per command, the
# checked build against the benchmark-only `bench-no-check` build (check and in-flight
# accounting compiled out), both driving 4 KiB READ (10) / WRITE (10) through FencedLu::run on
# a page-cache file with a real SQLite store (crates/target/examples/check_cost.rs). The two
# builds alternate within each round, so drift of the host's load reaches both; medians of
# thread CPU time per command.
# Usage: bench/check-cost.sh [ROUNDS] [COMMANDS]      (defaults 9 and 200000; scratch in /dev/shm)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
rounds=${1:-9}; commands=${2:-200000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target}
cargo build --release -q -p pr-target --example check_cost
cargo build --release -q -p pr-target --example check_cost --features bench-no-check \
  --target-dir "$CARGO_TARGET_DIR/bench-no-check"
checked=$CARGO_TARGET_DIR/release/examples/check_cost
nocheck=$CARGO_TARGET_DIR/bench-no-check/release/examples/check_cost
scratch=$(mktemp -d /dev/shm/check-cost.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
echo "# bench/check-cost.sh: $rounds rounds x $commands commands per kind, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -a cr cw nr nw
for r in $(seq "$rounds"); do
  # Alternate which build goes first.
  if [ $((r % 2)) = 1 ]; then order="checked nocheck"; else order="nocheck checked"; fi
  for b in $order; do
    bin=$checked; [ "$b" = nocheck ] && bin=$nocheck
    read -r _ rd _ wr < <("$bin" "$scratch" "$commands")
    echo "round $r $b: read $rd ns, write $wr ns per command"
    if [ "$b" = checked ]; then cr+=("$rd"); cw+=("$wr"); else nr+=("$rd"); nw+=("$wr"); fi
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mcr=$(median "${cr[@]}"); mcw=$(median "${cw[@]}"); mnr=$(median "${nr[@]}"); mnw=$(median "${nw[@]}")
echo "| command | checked ns | no check ns | check's cost ns | share of the checked command |"
echo "|---|---:|---:|---:|---:|"
for k in read write; do
  if [ $k = read ]; then c=$mcr; n=$mnr; else c=$mcw; n=$mnw; fi
  awk -v k="$k" -v c="$c" -v n="$n" 'BEGIN {printf "| %s 4k | %.0f | %.0f | %.0f | %.1f %% |\n", k, c, n, c-n, 100*(c-n)/c}'
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
