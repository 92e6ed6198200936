#!/bin/bash
# Runs inside the lab guest for lab/target-lio.sh: eight vhost-user-scsi controllers of one
# pr-target (PCI slots 10h-17h; 10h-12h are SAS initiators 1-3, 13h-17h iSCSI names) and LIO
# in the same guest.
#  1. pr-lab run --against target: the parity and cluster scenario files, and
#     lab/scenarios/target/access-types.scn (reads and writes of a holder, a registrant and
#     an unregistered initiator under each of the six types), on pr-target and on LIO:
#     replies byte-identical but for the named SPC-4 departures, every read and write
#     allowed or refused (RESERVATION CONFLICT) alike.
#  2. Pacemaker's fence_scsi agent (Debian fence-agents), node 1 on slot 10h, node 2 on 11h:
#     unfence both, node 2 fences node 1: node 1's writes fail with RESERVATION CONFLICT and
#     the backing file (read over 9p; lab/target-lio.sh checks it again) keeps what it held;
#     node 1 is unfenced again and writes.
#  3. libiscsi's iscsi-test-cu over the SG device of a pr-target disk: SBC and SPC tests and
#     the persistent-reservation tests; a test may fail only if it is listed below with why.
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
WORK=$TOP/build/target-lio
pass=0; fail=0
ok() { echo "PASS target-lio: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL target-lio: $*"; fail=$((fail + 1)); }
finish() {
  [ $fail = 0 ] || dmesg | grep -iE "virtio|scsi|reservation|nexus|Call Trace|blocked" | tail -30 | sed 's/^/lab-dmesg: /'
  echo "LAB-RESULT $pass $fail"; exit 0
}
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
mkdir -p /run/lab
verbose=; grep -q 'labverbose=1' /proc/cmdline && verbose=-v
# serial DISK: VPD page 80h's product serial number.
serial() {
  if [ -s "/sys/block/${1#/dev/}/device/vpd_pg80" ]; then
    tail -c +5 "/sys/block/${1#/dev/}/device/vpd_pg80"
  else
    sg_vpd --page=0x80 --raw "$1" 2>/dev/null | tail -c +5
  fi
}
# disk SLOT SERIAL: the pr-target disk of that serial on the controller in PCI slot SLOT.
disk() {
  local d
  for d in /sys/block/sd*; do
    [ -e "$d" ] || continue
    readlink -f "$d" | grep -q "/0000:00:$1.0/" || continue
    [ "$(serial "/dev/${d##*/}")" = "$2" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
# Every disk of the eight controllers (6 + 5 + 2 + 3 x 2 + 2 x 2 LUNs), bounded.
want=23
for _ in $(seq 300); do
  n=$(cat /sys/block/sd*/device/vendor 2>/dev/null | grep -c "^PR-HELP *$")
  [ "$n" -ge $want ] && break
  sleep 0.1
done
if [ "$n" -lt $want ]; then
  ko "the guest sees $n of pr-target's $want disks ($(ls /sys/block | tr '\n' ' '))"
  dmesg | grep -iE "scsi|virtio" | tail -20 | sed 's/^/  | /'
  finish
fi
ok "the guest sees pr-target's $want disks on eight vhost-user-scsi controllers"

# LAB_TARGET_LIO_PARTS on the host (labparts= here) picks parts for experiments; all by default.
parts=,$(sed -n 's/.*labparts=\([^ ]*\).*/\1/p' /proc/cmdline),
[ "$parts" = ,, ] && parts=,scenarios,fence,cu,
part() { case $parts in *,$1,*) return 0;; esac; echo "target-lio: part $1 not asked for (labparts)"; return 1; }

# 1. The scenario files against pr-target.
if part scenarios; then
S=$TOP/lab/scenarios
o=/run/lab-target-lio.out
$BIN/pr-lab run --bin-dir "$BIN" --against target $verbose \
  $S/parity.scn $S/fence-scsi.scn $S/windows-arbitration.scn $S/preempt-abort-parity.scn \
  $S/target/access-types.scn 2>&1 | tee $o
pass=$((pass + $(grep -c '^PASS ' $o))); fail=$((fail + $(grep -c '^FAIL ' $o)))
grep -q '^LAB-SCENARIOS ' $o || ko "pr-lab --against target did not finish"
fi

# 2. fence_scsi, both nodes on pr-target's lab-fence-agent LU.
A=$(disk 10 lab-fence-agent); B=$(disk 11 lab-fence-agent)
if ! part fence; then
  :
elif [ -z "$A" ] || [ -z "$B" ]; then
  ko "fence_scsi: no lab-fence-agent disk on both SAS controllers"
else
  IMG=$WORK/fence-agent.img
  # The agent keeps the local node's key in /var/run/cluster.key: both nodes run in this
  # guest, so the last unfence names the node that fences next (node 2 here).
  fa() { timeout 120 fence_scsi "$@" > /run/fa.out 2>&1; }
  keys() { sg_persist --no-inquiry --in --read-keys "$1" 2>/dev/null | grep -oE '^ +0x[0-9a-f]+' | tr -d ' ' | tr '\n' ' '; }
  holder() { sg_persist --no-inquiry --in --read-reservation "$1" 2>/dev/null | tr '\n' ' '; }
  region() { dd if="$IMG" bs=4096 skip=$1 count=16 status=none; }
  if fa -o on -k 6b01 -d "$A" && fa -o on -k 6b02 -d "$B"; then
    ok "fence_scsi -o on: both nodes unfenced (keys: $(keys "$B"))"
  else
    ko "fence_scsi -o on: $(tr '\n' ' ' < /run/fa.out)"
  fi
  [ "$(keys "$A")" = "0x6b01 0x6b02 " ] && holder "$A" | grep -q "Key=0x6b01.*Write Exclusive, registrants only" \
    && ok "fence_scsi: node 1 holds WRITE EXCLUSIVE - REGISTRANTS ONLY, both keys registered" \
    || ko "fence_scsi: keys '$(keys "$A")', reservation: $(holder "$A")"
  fa -o status -k 6b01 -d "$A" && ok "fence_scsi -o status: node 1 is on" || ko "fence_scsi -o status of node 1: rc $? $(tr '\n' ' ' < /run/fa.out)"
  if dd if="$WORK/before" of="$A" bs=4096 seek=100 oflag=direct conv=notrunc status=none && region 100 | cmp -s - "$WORK/before"; then
    ok "fence_scsi: node 1 writes while unfenced (in the backing file)"
  else
    ko "fence_scsi: node 1's write before the fence failed or is not in the backing file"
  fi
  # Node 2 fences node 1 (PREEMPT AND ABORT of key 6b01 with node 2's key).
  if fa -o off -k 6b01 -d "$B"; then ok "fence_scsi -o off: node 2 fenced node 1"; else ko "fence_scsi -o off: $(tr '\n' ' ' < /run/fa.out)"; fi
  fa -o status -k 6b01 -d "$B"; rc=$?
  [ $rc = 2 ] && ok "fence_scsi -o status: node 1 is off" || ko "fence_scsi -o status of node 1 after the fence: rc $rc (expected 2, off): $(tr '\n' ' ' < /run/fa.out)"
  [ "$(keys "$B")" = "0x6b02 " ] && holder "$B" | grep -q "Key=0x6b02" \
    && ok "fence_scsi: node 1's key is gone and node 2 holds the reservation" \
    || ko "fence_scsi: after the fence keys '$(keys "$B")', reservation: $(holder "$B")"
  # Node 1 writes: dd fails, and the status is RESERVATION CONFLICT (Linux 6.1 reports it to
  # the writer as EBADE, "Invalid exchange"; sg_raw shows the status itself).
  sg_turs "$A" >/dev/null 2>&1; sg_turs "$A" >/dev/null 2>&1
  if dd if="$WORK/fenced" of="$A" bs=4096 seek=100 oflag=direct conv=notrunc status=none 2>/run/dd.err; then
    ko "fence_scsi: the fenced node 1 wrote"
  elif grep -q "Invalid exchange" /run/dd.err; then
    ok "fence_scsi: the fenced node's write fails: $(head -1 /run/dd.err)"
  else
    ko "fence_scsi: the fenced node's write failed otherwise: $(head -2 /run/dd.err | tr '\n' ' ')"
  fi
  # WRITE(10) of one block at LBA 800 (4 KiB block 100), straight.
  sg_raw -s 512 -i "$WORK/fenced" "$A" 2a 00 00 00 03 20 00 00 01 00 > /run/sgw.out 2>&1
  grep -qi "SCSI Status: Reservation Conflict" /run/sgw.out \
    && ok "fence_scsi: node 1's WRITE(10) gets status RESERVATION CONFLICT" \
    || ko "fence_scsi: node 1's WRITE(10): $(tr '\n' ' ' < /run/sgw.out)"
  region 100 | cmp -s - "$WORK/before" && ok "fence_scsi: the backing file still holds node 1's data from before the fence" \
    || ko "fence_scsi: the fenced region of the backing file changed"
  dd if="$A" of=/dev/null bs=4096 skip=100 count=16 iflag=direct status=none && ok "fence_scsi: the fenced node still reads (WE-RO)" || ko "fence_scsi: the fenced node cannot read"
  # Unfence node 1 again: it registers (node 2 keeps the reservation) and writes.
  if fa -o on -k 6b01 -d "$A"; then ok "fence_scsi -o on: node 1 unfenced again"; else ko "fence_scsi -o on again: $(tr '\n' ' ' < /run/fa.out)"; fi
  if dd if="$WORK/after" of="$A" bs=4096 seek=200 oflag=direct conv=notrunc status=none && region 200 | cmp -s - "$WORK/after"; then
    ok "fence_scsi: node 1 writes again after the unfence (in the backing file)"
  else
    ko "fence_scsi: node 1 cannot write after the unfence (keys '$(keys "$A")')"
  fi
fi

# 3. iscsi-test-cu over the SG device of pr-target's lab-cu LU (node 1's controller).
ISCSI_ROOT=$TOP/build/lab/libiscsi/root
TESTS=SCSI.TestUnitReady,SCSI.Inquiry,SCSI.ReadCapacity10,SCSI.ReadCapacity16,SCSI.Read6,SCSI.Read10,SCSI.Read12,SCSI.Read16,SCSI.Write10,SCSI.Write12,SCSI.Write16,SCSI.WriteVerify10,SCSI.WriteVerify12,SCSI.WriteVerify16,SCSI.Verify10,SCSI.Verify12,SCSI.Verify16,SCSI.ModeSense6,SCSI.ReportSupportedOpcodes,SCSI.StartStopUnit,SCSI.Unmap,SCSI.WriteSame10,SCSI.WriteSame16,SCSI.Reserve6,SCSI.PrinReadKeys,SCSI.PrinServiceactionRange,SCSI.PrinReportCapabilities,SCSI.ProutRegister,SCSI.ProutReserve,SCSI.ProutClear,SCSI.ProutPreempt
# Tests that may fail, each with its reason (none yet).
declare -A EXPECTED_FAIL=()
CU=$(disk 10 lab-cu)
PG=
[ -n "$CU" ] && PG=/dev/$(ls "/sys/block/${CU#/dev/}/device/scsi_generic" 2>/dev/null | head -1)
if ! part cu; then
  :
elif [ -n "$PG" ] && [ -c "$PG" ]; then
  LD_LIBRARY_PATH=$ISCSI_ROOT/usr/lib/x86_64-linux-gnu:$ISCSI_ROOT/lib/x86_64-linux-gnu \
    timeout 400 "$ISCSI_ROOT/usr/bin/iscsi-test-cu" -d -v -t "$TESTS" "$PG" > /run/cu.out 2>&1; rc=$?
  awk 'function out() { if (test != "") print tsuite "." test, res (skip ? " skipped" : ""); test = "" }
       /^Suite: /{suite=$2}
       /^ *Test: /{out(); tsuite=suite; test=$2; res="?"; skip=0}
       /SKIPPED/{skip=1}
       /(^|\.\.\.)passed$/{res="passed"; out()}
       /(^|\.\.\.)FAILED$/{res="FAILED"; out()}
       END{out()}' < /run/cu.out | sort > /run/cu.txt
  np=$(grep -c ' passed$' /run/cu.txt); ns=$(grep -c ' skipped$' /run/cu.txt); nf=$(grep -c ' FAILED' /run/cu.txt)
  unexpected=
  while read -r t r _; do
    [ "$r" = FAILED ] || continue
    if [ -n "${EXPECTED_FAIL[$t]:-}" ]; then echo "  | iscsi-test-cu: $t fails, as listed: ${EXPECTED_FAIL[$t]}"; else unexpected="$unexpected $t"; fi
  done < /run/cu.txt
  if [ "$np" -gt 0 ] && [ -z "$unexpected" ] && [ "$rc" != 124 ]; then
    ok "iscsi-test-cu on pr-target's $PG: $np passed, $ns skipped, $nf failed (listed)"
  else
    ko "iscsi-test-cu on pr-target's $PG: rc=$rc; unlisted failures:${unexpected:- none}"
    grep -E "\[FAILED\]|FAILED|Expected|expected|failed with" /run/cu.out | awk '!seen[$0]++' | head -60 | sed 's/^/  | /'
  fi
  sed "s/^/  | iscsi-test-cu: /" /run/cu.txt
  grep SKIPPED /run/cu.out | sed 's/^ *//' | awk '!seen[$0]++' | sed 's/^/  | skipped: /'
else
  ko "iscsi-test-cu: no SG device for pr-target's lab-cu disk ($CU)"
fi
finish
