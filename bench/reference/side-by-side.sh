#!/bin/bash
# Side by side on one loop device, servers alternating within each round: QEMU's C helper, our
# daemon, and the reference server in thread-per-connection.c (one blocking thread per
# connection, recvmsg -> SG_IO -> close -> write, no checks): what the bare path costs here.
# Extra servers to compare (e.g. other builds of pr-helper) as NAME=BINARY in $EXTRA.
# Usage (root): bench/reference/side-by-side.sh events|threads ROUNDS CLIENTS...
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
gen=${1:?events or threads}; rounds=${2:?rounds}; shift 2
work=$(mktemp -d /tmp/side-by-side.XXXXXX)
gcc -O2 -o "$work/reference" "$top/bench/reference/thread-per-connection.c" -lpthread
truncate -s 64M "$work/img"
loop=$(losetup -f --show "$work/img")
trap 'losetup -d $loop; rm -rf "$work"' EXIT
declare -A bin=([qemu-pr-helper]="/usr/bin/qemu-pr-helper -k" [pr-helper]="$top/target/release/pr-helper -k" [reference]="$work/reference")
names="qemu-pr-helper pr-helper"
for e in ${EXTRA:-}; do bin[${e%%=*}]="${e#*=} -k"; names="$names ${e%%=*}"; done
names="$names reference"
for r in $(seq "$rounds"); do
  for n in "$@"; do
    for s in $names; do
      sock=$work/$s.sock
      ${bin[$s]} "$sock" 2>/dev/null & pid=$!
      for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
      [ -S "$sock" ] || { echo "$s did not listen on $sock within 10 s" >&2; kill $pid; exit 1; }
      out=$("$top/target/release/pr-bench" run --socket "$sock" --clients "$n" --duration 2 \
        --fd-kind path --device "$loop" --generator "$gen" --server-pid $pid 2>&1)
      kill $pid; wait $pid 2>/dev/null || true
      rps=$(echo "$out" | sed -n 's/.*: \([0-9]*\) requests\/s.*/\1/p' | head -1)
      p50=$(echo "$out" | sed -n 's/.*p50 \([0-9.]*\).*/\1/p' | head -1)
      echo "round $r, $gen generator, $n clients, $s: $rps requests/s, p50 $p50 µs"
    done
  done
done
