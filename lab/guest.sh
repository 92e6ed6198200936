#!/bin/bash
# Runs inside the lab guest (a chroot of the host's root, read-only, with tmpfs on /run and
# /tmp): the scenario files under lab/scenarios through pr-lab, then the nested-QEMU scenario,
# the emulate backend's lab part (lab/emulate-part.sh), the NVMe checks, the hung-device checks,
# then the multipath scenario.
# Prints PASS/FAIL lines and a closing "LAB-RESULT <passed> <failed>" for lab/run.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
pass=0; fail=0
out=/run/lab-scenarios.out
# LAB_VERBOSE=1 lab/run prints every step's result (passed on the kernel command line).
verbose=; grep -q 'labverbose=1' /proc/cmdline && verbose=-v
$BIN/pr-lab run --bin-dir "$BIN" $verbose $TOP/lab/scenarios/*.scn 2>&1 | tee $out
pass=$((pass + $(grep -c '^PASS ' $out))); fail=$((fail + $(grep -c '^FAIL ' $out)))
grep -q '^LAB-SCENARIOS ' $out || { echo "FAIL pr-lab did not finish"; fail=$((fail+1)); }
# The nested-QEMU client scenario.
bash $TOP/lab/nested.sh 2>&1 | tee /run/lab-nested.out
pass=$((pass + $(grep -c '^PASS ' /run/lab-nested.out))); fail=$((fail + $(grep -c '^FAIL ' /run/lab-nested.out)))
mkdir -p /run/lab
# Emulated reservations: the parity and cluster scenarios against the emulation, then nested
# QEMU on the emulate backend with iscsi-test-cu (before multipath: see emulate_part).
. $TOP/lab/emulate-part.sh
emulate_part
# NVMe: the block-layer backend chosen by itself.
bash $TOP/lab/nvme.sh 2>&1 | tee /run/lab-nvme.out
pass=$((pass + $(grep -c '^PASS ' /run/lab-nvme.out))); fail=$((fail + $(grep -c '^FAIL ' /run/lab-nvme.out)))
# Hung devices (scsi_debug) next to a healthy one.
bash $TOP/lab/hang.sh 2>&1 | tee /run/lab-hang.out
pass=$((pass + $(grep -c '^PASS ' /run/lab-hang.out))); fail=$((fail + $(grep -c '^FAIL ' /run/lab-hang.out)))
grep -q '^PASS hang: the daemon is still running' /run/lab-hang.out || { echo "FAIL hang: the scenario did not finish"; fail=$((fail+1)); }
# The emulate backend's LU identity from VPD page 0x83 (lab/emulate-vpd.sh).
bash $TOP/lab/emulate-vpd.sh 2>&1 | tee /run/lab-emulate-vpd.out
pass=$((pass + $(grep -c '^PASS ' /run/lab-emulate-vpd.out))); fail=$((fail + $(grep -c '^FAIL ' /run/lab-emulate-vpd.out)))
# Multipath last: it loads device-mapper, after which our daemon keeps CAP_SYS_ADMIN.
bash $TOP/lab/multipath.sh 2>&1 | tee /run/lab-multipath.out
pass=$((pass + $(grep -c '^PASS ' /run/lab-multipath.out))); fail=$((fail + $(grep -c '^FAIL ' /run/lab-multipath.out)))
grep -q '^PASS multipath: no registrations remain' /run/lab-multipath.out || { echo "FAIL multipath: the scenario did not finish"; fail=$((fail+1)); }
[ $fail = 0 ] || dmesg | grep -iE "SPC-3|target_core|tcm_loop|aptpl|reservation|blocked|Call Trace" | tail -40 | sed 's/^/lab-dmesg: /'
echo "LAB-RESULT $pass $fail"
