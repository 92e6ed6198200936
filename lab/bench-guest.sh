#!/bin/bash
# Runs inside the lab guest for lab/bench: pr-bench compare on a real LIO disk (SG_IO
# passthrough to the kernel's SPC-4 implementation), QEMU's C helper and ours side by side.
# The results directory comes back to the host base64-encoded on the console.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
cfg=/sys/kernel/config/target
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
truncate -s 8M /run/bench.img
mkdir -p $cfg/core/fileio_0/bench
echo "fd_dev_name=/run/bench.img,fd_dev_size=8388608" > $cfg/core/fileio_0/bench/control
echo 1 > $cfg/core/fileio_0/bench/enable
t=$cfg/loopback/naa.5001405eee000a01/tpgt_1
mkdir -p $t/lun; echo naa.5001405eee000b01 > $t/nexus
mkdir -p $t/lun/lun_0; ln -s $cfg/core/fileio_0/bench $t/lun/lun_0/lu
addr=$(cat $t/address)
for s in $(seq 100); do
  d=$(for b in /sys/class/block/sd*; do [ "$(basename "$(readlink $b/device)")" = "$addr:0" ] && basename $b; done)
  [ -n "$d" ] && [ -b /dev/$d ] && break; sleep 0.1
done
for s in 1 2 3 4 5; do sg_turs /dev/$d >/dev/null 2>&1 && break; done
echo "lab-bench: LIO disk /dev/$d"
mkdir -p /run/bench-lio
# The sweep the report uses on the host, minus the idle-connection test (RLIMIT-bound here).
$BIN/pr-bench compare --device /dev/$d --scratch-dir /run --results /run/bench-lio \
  --clients ${BENCH_CLIENTS:-1,16,64} --duration ${BENCH_DURATION:-2} --rounds ${BENCH_ROUNDS:-3} \
  --idle-connections 0 2>&1 | sed 's/^/lab-bench: /'
echo "BENCH-TAR-BEGIN"
tar -C /run -czf - bench-lio | base64 -w 76
echo "BENCH-TAR-END"
echo "LAB-RESULT 1 0"
