#!/bin/bash
# Runs inside the lab guest for lab/bench: pr-bench compare on a real LIO disk (SG_IO
# passthrough to the kernel's SPC-4 implementation), QEMU's C helper and ours side by side.
# The results directory comes back to the host base64-encoded on the console.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
. "$TOP/lab/lio.sh"
lio_lu bench
dev=$(lio_disk bench naa.5001405eee000a01 naa.5001405eee000b01) || { echo "lab-bench: no LIO disk"; exit 1; }
echo "lab-bench: LIO disk $dev"
mkdir -p /run/bench-lio
# The sweep the report uses on the host, minus the idle-connection test (RLIMIT-bound here).
$BIN/pr-bench compare --device $dev --scratch-dir /run --results /run/bench-lio \
  --clients ${BENCH_CLIENTS:-1,16,64} --duration ${BENCH_DURATION:-2} --rounds ${BENCH_ROUNDS:-3} \
  --idle-connections 0 2>&1 | sed 's/^/lab-bench: /'
echo "BENCH-TAR-BEGIN"
tar -C /run -czf - bench-lio | base64 -w 76
echo "BENCH-TAR-END"
echo "LAB-RESULT 1 0"
