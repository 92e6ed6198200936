#!/bin/bash
# Runs inside the lab guest for lab/bench-target (a benchmark): fio on the disks the host
# names on the kernel command line (benchdevs=NAME@SLOT,...; by default QEMU's virtio-scsi +
# scsi-hd "qemu" at PCI slot 12h, pr-target "ours" at 10h and pr-target built with
# bench-no-check "nocheck" at 11h; --stores: "sqlite" at 10h and "etcd" at 11h) — every
# workload on each disk back to back, the order reversed every other round. Around each run on a pr-target disk it asks the host for pr-target's CPU
# ticks ("BENCH-CPU n begin|end dev" on the console; the host writes them into the file
# cpu-n-begin|end in the work directory, which this waits for over 9p).
# Prints "BENCH-RESULT round workload dev value unit ios n" per run (n: the sample number of
# its CPU ticks, cpu-n-begin/end on the host), then LAB-RESULT.
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
# The disks: NAME@SLOT,... (PCI slot in hex); "qemu" is QEMU's own device (no CPU samples).
specs=$(sed -n 's/.*benchdevs=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$specs" ] || specs="qemu@12,ours@10,nocheck@11"
names=()
declare -A dev slot
for spec in ${specs//,/ }; do
  names+=("${spec%@*}"); slot[${spec%@*}]=${spec#*@}
done
for _ in $(seq 300); do
  missing=0
  for d in "${names[@]}"; do
    dev[$d]=$(disk_at "${slot[$d]}")
    [ -n "${dev[$d]}" ] || missing=1
  done
  [ $missing = 0 ] && break
  sleep 0.1
done
if [ $missing = 1 ]; then
  echo "FAIL bench: disks: $(for d in "${names[@]}"; do printf "%s@%s '%s' " "$d" "${slot[$d]}" "${dev[$d]}"; done)"
  echo "LAB-RESULT 0 1"; exit 0
fi
echo "bench: $(for d in "${names[@]}"; do printf '%s %s, ' "$d" "${dev[$d]}"; done)$rounds rounds of ${runtime}s"
for d in "${names[@]}"; do
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
# One fio process per round (starting fio is slow under TCG: its 64 libraries come over 9p):
# a job file with every workload on the three disks, one job after the other (stonewall).
# Around each job on a pr-target disk, exec_prerun/exec_postrun run /run/ask.sh, which asks
# the host for a CPU sample on the console and waits (bounded) for its answer file.
cat > /run/ask.sh <<'ASK'
#!/bin/bash
echo "BENCH-CPU $1 $2 $3" > /dev/console
for _ in $(seq 600); do [ -s "$4/cpu-$1-$2" ] && exit 0; sleep 0.05; done
echo "FAIL bench: no CPU sample $1 $2 from the host" > /dev/console
ASK
chmod +x /run/ask.sh
n=0
for r in $(seq "$rounds"); do
  order="${names[*]}"
  if [ $((r % 2)) = 0 ]; then
    order=""; for d in "${names[@]}"; do order="$d $order"; done
  fi
  {
    printf '[global]\ndirect=1\nioengine=libaio\nsize=256m\nruntime=%s\ntime_based\nrandrepeat=0\nnorandommap\nstonewall\n' "$runtime"
    for w in "${workloads[@]}"; do
      set -- $w
      for d in $order; do
        n=$((n + 1))
        printf '[%s:%s:%s:%s]\nfilename=%s\nrw=%s\nbs=%s\niodepth=%s\n' "$r" "$1" "$d" "$n" "${dev[$d]}" "$2" "$3" "$4"
        if [ "$d" != qemu ]; then
          printf 'exec_prerun=/run/ask.sh %s begin %s %s\nexec_postrun=/run/ask.sh %s end %s %s\n' "$n" "$d" "$WORK" "$n" "$d" "$WORK"
        fi
      done
    done
  } > /run/round.fio
  # fio saves the hooks' output as JOB.prerun.txt in its working directory: /run, writable.
  (cd /run && fio --output-format=terse --terse-version=3 /run/round.fio > /run/round.out 2>/run/fio.err) \
    || echo "FAIL bench: fio round $r: $(head -3 /run/fio.err | tr '\n' ' ')"
  # terse v3: field 3 the job name; 6-8 read total KiB, bandwidth KiB/s, IOPS; 47-49 writes.
  awk -F';' '/^3;/ {
    split($3, j, ":"); w = j[2]
    if (w ~ /read/) { kib = $6; bw = $7; iops = $8 } else { kib = $47; bw = $48; iops = $49 }
    if (w ~ /-4k-/) printf "BENCH-RESULT %s %s %s %d IOPS %d %s\n", j[1], w, j[3], iops, kib / 4, j[4]
    else printf "BENCH-RESULT %s %s %s %.0f MiB/s %d %s\n", j[1], w, j[3], bw / 1024, kib / 1024, j[4]
  }' /run/round.out
  echo "bench: round $r done"
done
echo "LAB-RESULT 1 0"
