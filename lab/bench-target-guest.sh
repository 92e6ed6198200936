#!/bin/bash
# Runs inside the lab guest for lab/bench-target (a benchmark): fio on three disks — QEMU's
# virtio-scsi + scsi-hd (PCI slot 12h), pr-target (10h) and pr-target built with
# bench-no-check (11h) — every workload on the three back to back, the order reversed every
# other round. Around each run on a pr-target disk it asks the host for pr-target's CPU
# ticks ("BENCH-CPU n begin|end dev" on the console; the host answers with the file
# cpu-n-begin|end in the work directory, read here over 9p).
# Prints "BENCH-RESULT round workload dev value unit ios ticks" per run, then LAB-RESULT.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
WORK=$TOP/build/bench-target
rounds=$(sed -n 's/.*benchrounds=\([0-9]*\).*/\1/p' /proc/cmdline)
runtime=$(sed -n 's/.*benchruntime=\([0-9]*\).*/\1/p' /proc/cmdline)
disk_at() {
  local d
  for d in /sys/block/sd*; do
    [ -e "$d" ] && readlink -f "$d" | grep -q "/0000:00:$1.0/" && echo "/dev/${d##*/}"
  done
}
declare -A dev
for _ in $(seq 300); do
  dev[ours]=$(disk_at 10); dev[nocheck]=$(disk_at 11); dev[qemu]=$(disk_at 12)
  [ -n "${dev[ours]}" ] && [ -n "${dev[nocheck]}" ] && [ -n "${dev[qemu]}" ] && break
  sleep 0.1
done
if [ -z "${dev[ours]}" ] || [ -z "${dev[nocheck]}" ] || [ -z "${dev[qemu]}" ]; then
  echo "FAIL bench: disks: ours '${dev[ours]}' nocheck '${dev[nocheck]}' qemu '${dev[qemu]}'"
  echo "LAB-RESULT 0 1"; exit 0
fi
echo "bench: qemu ${dev[qemu]}, ours ${dev[ours]}, nocheck ${dev[nocheck]}; $rounds rounds of ${runtime}s"
for d in qemu ours nocheck; do
  s=${dev[$d]#/dev/}
  echo none > /sys/block/$s/queue/scheduler 2>/dev/null
  echo "bench: $d $(cat /sys/block/$s/device/vendor 2>/dev/null) $(cat /sys/block/$s/device/model 2>/dev/null) queue $(cat /sys/block/$s/device/queue_depth) max_sectors_kb $(cat /sys/block/$s/queue/max_sectors_kb) nr_requests $(cat /sys/block/$s/queue/nr_requests)"
done
# name rw bs iodepth
workloads=(
  "randread-4k-qd1 randread 4k 1" "randread-4k-qd32 randread 4k 32"
  "randwrite-4k-qd1 randwrite 4k 1" "randwrite-4k-qd32 randwrite 4k 32"
  "read-1m-qd1 read 1m 1" "read-1m-qd32 read 1m 32"
  "write-1m-qd1 write 1m 1" "write-1m-qd32 write 1m 32"
)
n=0
# ask N EDGE DEV: the host's tick count for DEV's pr-target (bounded wait).
ask() {
  echo "BENCH-CPU $1 $2 $3"
  for _ in $(seq 600); do [ -s "$WORK/cpu-$1-$2" ] && { cat "$WORK/cpu-$1-$2"; return 0; }; sleep 0.05; done
  echo "?"; return 1
}
run() { # run ROUND NAME RW BS QD DEV
  local r=$1 name=$2 rw=$3 bs=$4 qd=$5 d=$6 t0=- t1=- ticks=- line io kib val unit ios
  n=$((n + 1))
  [ "$d" != qemu ] && t0=$(ask "$n" begin "$d")
  line=$(fio --name=b --filename="${dev[$d]}" --direct=1 --ioengine=libaio --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --size=256m --runtime="$runtime" --time_based \
    --randrepeat=0 --norandommap --output-format=terse --terse-version=3 2>/run/fio.err)
  [ "$d" != qemu ] && t1=$(ask "$n" end "$d")
  [ "$t0" != - ] && [ "$t0" != "?" ] && [ "$t1" != "?" ] && ticks=$((t1 - t0))
  # terse v3: fields 6-8 read total KiB, bandwidth KiB/s, IOPS; 47-49 the same for writes.
  case $rw in *read) io=6;; *) io=47;; esac
  kib=$(echo "$line" | awk -F';' -v f=$io '{print $f}')
  case $bs in
    4k) val=$(echo "$line" | awk -F';' -v f=$((io + 2)) '{print $f}'); unit=IOPS; ios=$((kib / 4));;
    *) val=$(echo "$line" | awk -F';' -v f=$((io + 1)) '{printf "%.0f", $f / 1024}'); unit=MiB/s; ios=$((kib / 1024));;
  esac
  if [ -z "$val" ] || [ -z "$kib" ]; then
    echo "FAIL bench: fio $name on $d: $(head -3 /run/fio.err | tr '\n' ' ')"; return
  fi
  echo "BENCH-RESULT $r $name $d $val $unit $ios $ticks"
}
for r in $(seq "$rounds"); do
  order="qemu ours nocheck"; [ $((r % 2)) = 0 ] && order="nocheck ours qemu"
  for w in "${workloads[@]}"; do
    set -- $w
    for d in $order; do run "$r" "$1" "$2" "$3" "$4" "$d"; done
  done
  echo "bench: round $r done"
done
echo "LAB-RESULT 1 0"
