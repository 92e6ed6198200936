#!/usr/bin/env bash
# pr-target against LIO and real cluster software (run on the host by lab/run after
# lab/target.sh): starts a pr-target of its own as nobody with seven sockets (seven
# vhost-user-scsi controllers, each one I_T nexus) and boots the 6.1 lab guest on them, where
# lab/target-lio-guest.sh runs
#   - the lab's parity and cluster scenario files with `pr-lab run --against target`: every
#     initiator's commands on pr-target and the same on LIO (tcm_loop or iSCSI, as the scenario
#     says) in the same guest, byte-identical but for the listed SPC-4 departures, and every
#     read/write allowed or refused alike;
#   - Pacemaker's fence_scsi (Debian fence-agents) with both nodes on pr-target;
#   - libiscsi's iscsi-test-cu over the SG device of a pr-target disk.
# Then it checks the fenced node's region in the backing file on the host and SIGTERM.
#
# The sockets are the nexuses LIO will name for the scenarios' initiators (pr-lab compares
# READ FULL STATUS byte for byte, so the TransportIDs must be the same): the SAS addresses of
# pr-lab's tcm_loop nexuses (crates/lab/src/lio.rs) on relative target ports 1 to 3, and the
# iSCSI names of its open-iscsi ifaces (crates/lab/src/lio/iscsi.rs) with the ISIDs open-iscsi
# gives sessions 1 to 5 of a fresh guest (fence-scsi.scn logs in I1-I3, then
# preempt-abort-parity.scn I1-I2), on LIO's iSCSI target port 1. pr-lab reads each socket's
# nexus back from pr-target and fails naming both if they differ.
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${PR_TARGET_BIN:-$top/target/release/pr-target}
timeout_s=${LAB_TIMEOUT_TARGET_LIO:-1500}
# LAB_TARGET_LIO_PARTS=scenarios,fence,cu (the default: all) picks what the guest runs.
parts=${LAB_TARGET_LIO_PARTS:-scenarios,fence,cu}
pass=0; fail=0
ok() { echo "PASS target-lio: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL target-lio: $*"; fail=$((fail + 1)); }
finish() { echo "LAB-RESULT $pass $fail"; exit 0; }
out=$(LAB_KERNEL=6 "$top/lab/build-initramfs" | tail -1)
work=$top/build/target-lio
rm -rf "$work"; mkdir -p "$work"
# name size-in-MiB: one LU per scenario file (fresh reservations for each), the scratch LU on
# which pr-lab reads every socket's nexus, fence_scsi's and iscsi-test-cu's.
lus=(scratch:8 parity:8 fence-scsi:8 windows-arbitration:8 preempt-abort-parity:8 access-types:8 fence-agent:16 cu:16)
{
  echo "store = \"$work/reservations.db\""
  n=0
  for l in "${lus[@]}"; do
    n=$((n + 1)); name=${l%%:*}
    truncate -s "${l#*:}M" "$work/$name.img"
    printf '\n[[lu]]\nname = "lab-%s"\npath = "%s"\nnaa = "6001405000000000000000000000a%03x"\nserial = "lab-%s"\n' \
      "$name" "$work/$name.img" "$n" "$name"
  done
  # socket NAME INITIATOR PORT LUNS
  socket() {
    printf '\n[[socket]]\npath = "%s/%s.sock"\ninitiator = "%s"\nrelative_target_port = %s\nrequest_queues = 1\nluns = { %s }\n' \
      "$work" "$1" "$2" "$3" "$4"
  }
  socket sas1 sas:0x5001405000000b01 1 '0 = "lab-scratch", 1 = "lab-parity", 2 = "lab-windows-arbitration", 3 = "lab-fence-agent", 4 = "lab-cu", 5 = "lab-access-types"'
  socket sas2 sas:0x5001405000000b02 2 '0 = "lab-scratch", 1 = "lab-parity", 2 = "lab-windows-arbitration", 3 = "lab-fence-agent", 4 = "lab-access-types"'
  socket sas3 sas:0x5001405000000b03 3 '0 = "lab-scratch", 1 = "lab-access-types"'
  for i in 1 2 3; do
    socket "isc$i" "iqn.2026-11.org.pr-helper.lab:i$i,i,0x00023d00000$i" 1 '0 = "lab-scratch", 1 = "lab-fence-scsi"'
  done
  socket isc4 "iqn.2026-11.org.pr-helper.lab:i1,i,0x00023d000004" 1 '0 = "lab-scratch", 1 = "lab-preempt-abort-parity"'
  socket isc5 "iqn.2026-11.org.pr-helper.lab:i2,i,0x00023d000005" 1 '0 = "lab-scratch", 1 = "lab-preempt-abort-parity"'
} > "$work/target.toml"
sockets=(sas1 sas2 sas3 isc1 isc2 isc3 isc4 isc5)
chown -R nobody:nogroup "$work"
as_nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs)
"${as_nobody[@]}" "$bin" --config "$work/target.toml" --seccomp "${PR_TARGET_SECCOMP:-kill}" 2> "$work/target.log" &
tpid=$!
trap 'kill "$tpid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do
  grep -q "ready" "$work/target.log" 2>/dev/null && break
  kill -0 "$tpid" 2>/dev/null || break
  sleep 0.05
done
if ! grep -q "ready" "$work/target.log"; then
  ko "pr-target did not start: $(tail -3 "$work/target.log" | tr '\n' ' ')"; finish
fi
ok "pr-target serves ${#sockets[@]} sockets as $(ps -o user= -p "$tpid")"
# The fenced node's data (lab/target-lio-guest.sh reads them over 9p): 16 blocks of 4 KiB each.
yes FENCE-AGENT-BEFORE | head -c 65536 > "$work/before" || true   # yes ends on SIGPIPE
yes FENCE-AGENT-FENCED | head -c 65536 > "$work/fenced" || true
yes FENCE-AGENT-AFTER | head -c 65536 > "$work/after" || true
devs=(); slot=16
for s in "${sockets[@]}"; do
  devs+=(-chardev "socket,id=$s,path=$work/$s.sock" -device "vhost-user-scsi-pci,chardev=$s,num_queues=1,addr=$(printf '0x%x' $slot)")
  slot=$((slot + 1))
done
log=$work/console.log
start=$(date +%s)
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 \
  -nographic -no-reboot -kernel "$out/vmlinuz" -initrd "$out/initrd.img" \
  -append "console=ttyS0 quiet no_timer_check panic=-1 labscript=$top/lab/target-lio-guest.sh labparts=$parts labverbose=${LAB_VERBOSE:-0}" \
  -fsdev local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hr,mount_tag=hostroot \
  -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
  "${devs[@]}" > "$log" 2>&1 || true
echo "target: lio guest run took $(( $(date +%s) - start ))s"
tr -d '\r' < "$log" | grep -E '^(PASS |FAIL |  \| |lab-dmesg: )' || true
result=$(tr -d '\r' < "$log" | sed -n 's/^LAB-RESULT \([0-9]*\) \([0-9]*\)$/\1 \2/p' | tail -1)
if ! grep -q "LAB-BOOTED" "$log"; then
  ko "the guest did not boot (see $log)"
elif [ -z "$result" ]; then
  ko "the guest script did not finish within ${timeout_s}s (see $log); its last lines:"
  tr -d '\r' < "$log" | grep -v '^\[' | tail -8 | sed 's/^/  | /'
  pass=$((pass + $(tr -d '\r' < "$log" | grep -c '^PASS ' || true)))
  fail=$((fail + $(tr -d '\r' < "$log" | grep -c '^FAIL ' || true)))
else
  set -- $result
  pass=$((pass + $1)); fail=$((fail + $2))
  [ "$1" -gt 0 ] || ko "the guest ran no checks"
fi
# On the host: fence_scsi's fenced node wrote nothing (region at 4 KiB block 100 keeps the
# data it wrote before it was fenced), and after the unfence its write is there (block 200).
img=$work/fence-agent.img
if [[ ,$parts, != *,fence,* ]]; then
  echo "target: fence_scsi part not asked for (LAB_TARGET_LIO_PARTS=$parts)"
elif grep -q "^PASS target-lio: fence_scsi: the fenced node's write" "$log"; then
  if dd if="$img" bs=4096 skip=100 count=16 status=none | cmp -s - "$work/before"; then
    ok "host: fence_scsi's fenced node changed nothing in the backing file where it wrote"
  else
    ko "host: the fenced node's region differs from what it held before the fence ($(dd if="$img" bs=4096 skip=100 count=16 status=none | grep -c FENCED || true) lines of the fenced write)"
  fi
  if dd if="$img" bs=4096 skip=200 count=16 status=none | cmp -s - "$work/after"; then
    ok "host: the node's write after the unfence is in the backing file"
  else
    ko "host: the write after the unfence is not in the backing file"
  fi
else
  ko "host: the fence_scsi part did not reach the fenced write, nothing to check"
fi
kill -TERM "$tpid"
rc=0; wait "$tpid" || rc=$?
trap - EXIT
if [ "$rc" = 0 ] && grep -q "clean shutdown" "$work/target.log"; then
  ok "SIGTERM: pr-target exited 0 after the guest"
else
  ko "SIGTERM: pr-target exited $rc ($(tail -2 "$work/target.log" | tr '\n' ' '))"
fi
if grep -qiE "panicked|RUST_BACKTRACE" "$work/target.log"; then ko "pr-target panicked (see $work/target.log)"; fi
finish
