#!/bin/bash
# Runs inside the lab guest (L1): an unmodified QEMU runs a nested guest (L2) with three
# scsi-block disks, each with its own -object pr-manager-helper on a daemon of ours (as
# nobody:nogroup):
#   A, B: two LIO disks of one LU (two tcm_loop nexuses), each named in its daemon's --config
#     as the emulated LU "nested-shared" (backend "emulate"), both daemons on one SQLite store,
#     each its own initiator: L2 sees one emulated LU through two initiators;
#   P: an LIO disk through a passthrough (SG_IO) daemon: the reference for iscsi-test-cu.
# L2 (lab/nested-emulate-l2-init) registers through A and B, each sees the other's key, they
# conflict and preempt each other; then libiscsi's iscsi-test-cu runs its persistent-
# reservation tests over SG_IO on A (emulated) and on P (LIO). Prints one PASS/FAIL line per
# check.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
LAB=${LAB_BUILD:-$TOP/build/lab}
log=/run/l2e.log
ok() { echo "PASS nested-emulate: $1"; }
ko() { echo "FAIL nested-emulate: $1: $2"; }
t0=$(date +%s)

. "$TOP/lab/lio.sh"
lio_lu nemu
A=$(lio_disk nemu naa.5001405fff000c01 naa.5001405fff000d01) || { ko "LIO" "no disk for initiator A"; exit 0; }
B=$(lio_disk nemu naa.5001405fff000c02 naa.5001405fff000d02) || { ko "LIO" "no disk for initiator B"; exit 0; }
lio_lu npt
P=$(lio_disk npt naa.5001405fff000c03 naa.5001405fff000d03) || { ko "LIO" "no disk for the passthrough LU"; exit 0; }
# Nothing registered on the LIO LU behind A and B: what L2 sees there is the emulation's.
store=/run/nested-emu/store.db
rm -rf /run/nested-emu
pids=()
# start_daemon NAME DEVICE [CONFIG]: our daemon on /run/nested-NAME.sock, as nobody; returns
# once it answers REPORT CAPABILITIES for DEVICE (the socket appears before the daemon has
# opened its store, and a daemon that then fails leaves it behind: it can no longer remove it).
start_daemon() {
  local sock=/run/nested-$1.sock args=() pid
  [ -n "${3:-}" ] && { printf '%s' "$3" > /run/nested-$1.toml; args=(--config /run/nested-$1.toml); }
  rm -f "$sock"
  $BIN/pr-helper -v -k "$sock" -u nobody -g nogroup "${args[@]}" 2>/run/nested-$1.log &
  pid=$!
  pids+=($pid)
  for s in $(seq 300); do
    [ -S "$sock" ] && $BIN/pr-ctl --socket "$sock" capabilities "$2" >/dev/null 2>&1 && return 0
    kill -0 $pid 2>/dev/null || { ko "daemon $1" "exited before answering: $(tail -5 /run/nested-$1.log)"; return 1; }
    sleep 0.1
  done
  ko "daemon $1" "no answer to REPORT CAPABILITIES on $2 after 30 s: $(tail -5 /run/nested-$1.log)"
  return 1
}
emu_config() { # DEVICE INITIATOR
  printf '[[device]]\npath = "%s"\nbackend = "emulate"\nlu = "nested-shared"\n\n[emulate]\nstore = "%s"\ninitiator = "%s"\n' "$1" "$store" "$2"
}
start_daemon ea "$A" "$(emu_config "$A" iqn.2026-11.org.pr-helper.lab:vm-a)" || exit 0
start_daemon eb "$B" "$(emu_config "$B" iqn.2026-11.org.pr-helper.lab:vm-b)" || exit 0
start_daemon pt "$P" || exit 0

# -nodefaults: no NIC or VGA card, nor their option ROMs to run (the serial ports are given);
# vmlinux: the kernel uncompressed (lab/build-initramfs says why).
timeout --kill-after=5 1100 qemu-system-x86_64 -accel tcg -cpu max -m 256 -smp 1 \
  -display none -monitor none -no-reboot -nodefaults \
  -kernel $LAB/vmlinux -initrd $LAB/initrd-l2.img \
  -append "console=ttyS0 quiet no_timer_check panic=-1 rdinit=/init-emulate" \
  -serial file:$log \
  -device virtio-scsi-pci,id=scsi0 \
  -object pr-manager-helper,id=pra,path=/run/nested-ea.sock \
  -object pr-manager-helper,id=prb,path=/run/nested-eb.sock \
  -object pr-manager-helper,id=prp,path=/run/nested-pt.sock \
  -blockdev node-name=hda,driver=raw,file.driver=host_device,file.filename=$A,file.pr-manager=pra \
  -blockdev node-name=hdb,driver=raw,file.driver=host_device,file.filename=$B,file.pr-manager=prb \
  -blockdev node-name=hdp,driver=raw,file.driver=host_device,file.filename=$P,file.pr-manager=prp \
  -device scsi-block,drive=hda,bus=scsi0.0,scsi-id=0,lun=0 \
  -device scsi-block,drive=hdb,bus=scsi0.0,scsi-id=1,lun=0 \
  -device scsi-block,drive=hdp,bus=scsi0.0,scsi-id=2,lun=0 > /run/nested-emulate-qemu.out 2>&1 &
qp=$!

wait_for() { for s in $(seq "$2"); do grep -q "$1" $log 2>/dev/null && return 0; kill -0 $qp 2>/dev/null || return 1; sleep 1; done; return 1; }
rc_of() { tr -d '\r' < $log | sed -n "s/^L2 $1 rc=\([0-9]*\)$/\1/p" | tail -1; }
out_of() { tr -d '\r' < $log | sed -n "s/^L2OUT $1: //p"; }
# check WHAT RC [GREP-PATTERN [NOT-PATTERN]] DESCRIPTION: L2's step WHAT ended with RC, its
# output matches the pattern and not the other.
check() {
  local what=$1 rc=$2 want=$3 unwanted=$4 desc=$5 got
  got=$(rc_of "$what")
  if [ "$got" != "$rc" ]; then ko "$desc" "L2 $what rc=$got, expected $rc: $(out_of "$what" | tr '\n' ' ')"; return; fi
  if [ -n "$want" ] && ! out_of "$what" | grep -qE "$want"; then ko "$desc" "L2 $what printed no '$want': $(out_of "$what" | tr '\n' ' ')"; return; fi
  if [ -n "$unwanted" ] && out_of "$what" | grep -qE "$unwanted"; then ko "$desc" "L2 $what printed '$unwanted': $(out_of "$what" | tr '\n' ' ')"; return; fi
  ok "$desc"
}

TESTS=SCSI.PrinReadKeys,SCSI.PrinServiceactionRange,SCSI.PrinReportCapabilities,SCSI.ProutRegister,SCSI.ProutReserve,SCSI.ProutClear,SCSI.ProutPreempt
# cu_results < iscsi-test-cu output: one line per test, "Suite.Test passed|FAILED[ skipped]".
cu_results() {
  awk 'function out() { if (test != "") print tsuite "." test, res (skip ? " skipped" : ""); test = "" }
       /^Suite: /{suite=$2}
       /^ *Test: /{out(); tsuite=suite; test=$2; res="?"; skip=0}
       /SKIPPED/{skip=1}
       /(^|\.\.\.)passed$/{res="passed"; out()}
       /(^|\.\.\.)FAILED$/{res="FAILED"; out()}
       END{out()}' | sort
}
summary() { echo "$(grep -c ' passed$' "$1") passed, $(grep -c ' skipped$' "$1") skipped, $(grep -c ' FAILED' "$1") failed"; }
# sg_persist's exit status: 0 good, 6 unit attention, 24 reservation conflict (sg3_utils
# SG_LIB_CAT_*).
if wait_for L2-PHASE1-DONE 600; then
  echo "lab: nested-emulate guest reached phase 1 after $(( $(date +%s) - t0 ))s"
  check a-register 0 "" "" "L2 registers through disk A (initiator vm-a)"
  check b-register 0 "" "" "L2 registers through disk B (initiator vm-b)"
  check a-keys 0 "0xb2" "" "disk A sees B's key"
  check b-keys 0 "0xa1" "" "disk B sees A's key"
  check a-reserve 0 "" "" "A reserves WRITE EXCLUSIVE - REGISTRANTS ONLY"
  check b-reserve 24 "" "" "B's RESERVE conflicts with A's reservation"
  check b-reservation 0 "Key=0xa1" "" "B reads A's reservation"
  check b-preempt 0 "" "" "B preempts A"
  check a-keys-ua 6 "" "" "A is told its registration was preempted (UNIT ATTENTION)"
  check a-keys-after-preempt 0 "0xb2" "0xa1" "A's key is gone, B's remains"
  check a-reservation-after-preempt 0 "Key=0xb2" "" "A sees B's reservation"
  check a-register-again 0 "" "" "A registers again"
  check a-preempt-abort 0 "" "" "A preempts B back with PREEMPT AND ABORT"
  check b-keys-ua 6 "" "" "B is told its registration was preempted (UNIT ATTENTION)"
  check b-keys-after-abort 0 "0xa1" "0xb2" "B's key is gone, A's remains"
  check b-reservation-after-abort 0 "Key=0xa1" "" "B sees A's reservation"
  check a-clear 0 "" "" "A clears"
  check b-keys-after-clear 0 "there are NO registered reservation keys" "" "B sees no keys after the CLEAR"
  # The store holds the LU the two daemons shared, with one PR generation for both.
  st=$($BIN/pr-ctl store --store $store show nested-shared 2>&1)
  echo "$st" | grep -q "nested-shared" && ok "pr-ctl reads the shared store: $(echo "$st" | grep -i generation | head -1 | tr -s ' ')" || ko "pr-ctl store show" "$st"
  for d in ea eb; do
    grep -q "as initiator iSCSI name iqn.2026-11.org.pr-helper.lab:vm-${d#e}" /run/nested-$d.log && ok "daemon $d serves as initiator vm-${d#e}" || ko "daemon $d initiator" "$(head -5 /run/nested-$d.log)"
  done
  if wait_for L2-PHASE2-DONE 400; then
    # Per test: "Suite.Test passed|FAILED" and "skipped" when the test said [SKIPPED].
    for t in emulate lio; do out_of iscsi-test-cu-$t | cu_results > /run/l2e-cu-$t.txt; done
    if [ -s /run/l2e-cu-emulate.txt ] && cmp -s /run/l2e-cu-emulate.txt /run/l2e-cu-lio.txt; then
      ok "iscsi-test-cu in L2: the same result for every PR test on the emulated disk as on the LIO disk ($(summary /run/l2e-cu-emulate.txt))"
    else
      ko "iscsi-test-cu in L2" "emulated and LIO disks differ: $(diff /run/l2e-cu-emulate.txt /run/l2e-cu-lio.txt | tr '\n' ' ')"
    fi
    # What fails in L2 fails on both: QEMU refuses PR IN with an allocation length above
    # 8192 bytes (PR_HELPER_DATA_SIZE of its pr-manager-helper protocol) before any helper is
    # asked, and iscsi-test-cu reads with 16384. Every failure must be that one.
    other=$(out_of iscsi-test-cu-emulate | grep "\[FAILED\]" | grep -vE "PRIN command: failed with sense|PRIN/SA=0x[0-3] failed|ADDITIONAL_LENGTH was 0 bytes but 16376" || true)
    [ -z "$other" ] && ok "iscsi-test-cu in L2: every failure is a PR IN of 16384 bytes, which QEMU refuses above 8192" || ko "iscsi-test-cu in L2" "other failures: $other"
    sed "s/^/  | L2 iscsi-test-cu: /" /run/l2e-cu-emulate.txt
  else
    ko "L2 phase 2" "did not finish: $(tr -d '\r' < $log | tail -5)"
  fi
else
  ko "L2 phase 1" "did not finish: $(tr -d '\r' < $log 2>/dev/null | tail -5) $(tail -3 /run/nested-emulate-qemu.out)"
fi
kill $qp 2>/dev/null; wait $qp 2>/dev/null
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
# The same tests on LIO without QEMU: iscsi-test-cu in L1 over SG_IO on the LIO LU behind P,
# through a nexus of its own (no QEMU, no 8 KiB limit).
ISCSI_ROOT=$LAB/libiscsi/root
PL=$(lio_disk npt naa.5001405fff000c04 naa.5001405fff000d04) && PG=/dev/$(ls /sys/block/${PL#/dev/}/device/scsi_generic | head -1)
if [ -n "${PG:-}" ] && [ -c "$PG" ]; then
  LD_LIBRARY_PATH=$ISCSI_ROOT/usr/lib/x86_64-linux-gnu:$ISCSI_ROOT/lib/x86_64-linux-gnu \
    timeout 300 $ISCSI_ROOT/usr/bin/iscsi-test-cu -d -v -t "$TESTS" "$PG" > /run/l1-cu.out 2>&1; rc=$?
  cu_results < /run/l1-cu.out > /run/l1-cu.txt
  if [ $rc = 0 ] && [ -s /run/l1-cu.txt ] && ! grep -q FAILED /run/l1-cu.txt; then
    ok "iscsi-test-cu in L1 straight on LIO's $PG: $(summary /run/l1-cu.txt)"
  else
    ko "iscsi-test-cu in L1 on LIO" "rc=$rc: $(grep -E 'FAILED|tests ' /run/l1-cu.out | head -10 | tr '\n' ' ')"
  fi
  sed "s/^/  | L1 iscsi-test-cu: /" /run/l1-cu.txt
else
  ko "iscsi-test-cu in L1" "no sg device for the LIO LU"
fi
echo "lab: nested-emulate scenario took $(( $(date +%s) - t0 ))s"
