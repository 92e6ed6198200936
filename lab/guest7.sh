#!/bin/bash
# Runs inside the 7.x lab guest (LAB_KERNEL=7, trixie-backports' kernel): NVMe reservations
# against nvmet (lab/nvme-resv.sh), then the scenario files under lab/scenarios/kernel7 through
# pr-lab (the block-layer backend's read ioctls of Linux >= 6.19 on a SCSI LU).
# Prints PASS/FAIL lines and a closing "LAB-RESULT <passed> <failed>" for lab/run.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
pass=0; fail=0
count() { # count FILE: adds its PASS/FAIL lines to the totals
  pass=$((pass + $(grep -c '^PASS ' "$1"))); fail=$((fail + $(grep -c '^FAIL ' "$1")))
}
bash $TOP/lab/nvme-resv.sh 2>&1 | grep -v '^LAB-RESULT ' | tee /run/lab-nvme-resv.out
count /run/lab-nvme-resv.out
grep -q '^nvme-resv: done' /run/lab-nvme-resv.out || { echo "FAIL nvme-resv: the script did not finish"; fail=$((fail+1)); }
verbose=; grep -q 'labverbose=1' /proc/cmdline && verbose=-v
$BIN/pr-lab run --bin-dir "$BIN" $verbose $TOP/lab/scenarios/kernel7/*.scn 2>&1 | tee /run/lab-scenarios7.out
count /run/lab-scenarios7.out
grep -q '^LAB-SCENARIOS ' /run/lab-scenarios7.out || { echo "FAIL pr-lab did not finish"; fail=$((fail+1)); }
[ $fail = 0 ] || dmesg | grep -iE "target_core|tcm_loop|reservation|Call Trace" | tail -20 | sed 's/^/lab-dmesg: /'
echo "LAB-RESULT $pass $fail"
