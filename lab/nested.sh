#!/bin/bash
# Runs inside the lab guest (L1): an unmodified QEMU runs a nested guest (L2) whose disk is a
# scsi-block device backed by an LIO disk, with -object pr-manager-helper pointing at our
# daemon (as nobody:nogroup). L2 registers and reserves with sg_persist; L1 checks the result
# through a second initiator; then our daemon is restarted while QEMU runs, and L2's next
# commands must still succeed (QEMU reconnects). Prints one PASS/FAIL line per check.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
LAB=${LAB_BUILD:-$TOP/build/lab}
sock=/run/nested.sock
log=/run/l2.log
ok() { echo "PASS nested: $1"; }
ko() { echo "FAIL nested: $1: $2"; }
t0=$(date +%s)

# One LU, two initiators: A for QEMU, B for L1's own view.
. "$TOP/lab/lio.sh"
lio_lu nested
A=$(lio_disk nested naa.5001405fff000a01 naa.5001405fff000b01) || { ko "LIO" "no disk for initiator A"; exit 0; }
B=$(lio_disk nested naa.5001405fff000a02 naa.5001405fff000b02) || { ko "LIO" "no disk for initiator B"; exit 0; }

starts=0
start_helper() { starts=$((starts+1)); $BIN/pr-helper -v -k $sock -u nobody -g nogroup 2>/run/nested-helper.$starts.log & hp=$!
  for s in $(seq 100); do [ -S $sock ] && break; sleep 0.1; done; }
start_helper

rm -f /run/l2ctl.in /run/l2ctl.out; mkfifo /run/l2ctl.in /run/l2ctl.out
# Keep the control fifo's other ends open so QEMU never blocks on them.
exec 7<>/run/l2ctl.in 8<>/run/l2ctl.out
# -nodefaults: no NIC or VGA card, nor their option ROMs to run (the serial ports are given);
# vmlinux: the kernel uncompressed (lab/build-initramfs says why).
timeout --kill-after=5 420 qemu-system-x86_64 -accel tcg -cpu max -m 256 -smp 1 \
  -display none -monitor none -no-reboot -nodefaults \
  -kernel $LAB/vmlinux -initrd $LAB/initrd-l2.img -append "console=ttyS0 quiet no_timer_check panic=-1" \
  -serial file:$log -chardev pipe,id=ctl,path=/run/l2ctl -serial chardev:ctl \
  -device virtio-scsi-pci,id=scsi0 \
  -object pr-manager-helper,id=helper0,path=$sock \
  -blockdev node-name=hd,driver=raw,file.driver=host_device,file.filename=$A,file.pr-manager=helper0 \
  -device scsi-block,drive=hd,bus=scsi0.0 > /run/nested-qemu.out 2>&1 &
qp=$!

wait_for() { for s in $(seq "$2"); do grep -q "$1" $log 2>/dev/null && return 0; kill -0 $qp 2>/dev/null || return 1; sleep 1; done; return 1; }
rc_of() { tr -d '\r' < $log | sed -n "s/^L2 $1 rc=\([0-9]*\)$/\1/p" | tail -1; }

if wait_for L2-PHASE1-DONE 360; then
  echo "lab: nested guest reached phase 1 after $(( $(date +%s) - t0 ))s"
  [ "$(rc_of register)" = 0 ] && ok "L2 registers through QEMU and the helper" || ko "L2 register" "rc=$(rc_of register)"
  [ "$(rc_of reserve)" = 0 ] && ok "L2 reserves" || ko "L2 reserve" "rc=$(rc_of reserve)"
  sg_persist -n -k $B 2>&1 | grep -q "0xabc1" && ok "L1 sees L2's key through the other initiator" || ko "L1 sees key" "$(sg_persist -n -k $B 2>&1)"
  sg_persist -n -r $B 2>&1 | grep -q "Write Exclusive, registrants only" && ok "L1 sees L2's reservation" || ko "L1 sees reservation" "$(sg_persist -n -r $B 2>&1)"
  grep -q "^Uid:.*65534" /proc/$hp/status && grep -q "CapEff:.*0000000000020000" /proc/$hp/status && ok "helper serving QEMU runs as nobody with CAP_SYS_RAWIO" || ko "helper privileges" "$(grep -E 'Uid|CapEff' /proc/$hp/status)"
  # Restart our daemon while QEMU runs, then let L2 continue.
  kill $hp; wait $hp 2>/dev/null
  start_helper
  echo GO >&7
  if wait_for L2-PHASE2-DONE 120; then
    [ "$(rc_of keys-after-restart)" = 0 ] && ok "L2's command after a helper restart succeeds" || ko "L2 after restart" "rc=$(rc_of keys-after-restart)"
    [ "$(rc_of release-after-restart)" = 0 ] && ok "L2 releases after the restart" || ko "L2 release after restart" "rc=$(rc_of release-after-restart)"
    sg_persist -n -r $B 2>&1 | grep -q "NO reservation" && ok "L1 sees the release" || ko "L1 sees the release" "$(sg_persist -n -r $B 2>&1)"
    # The release went through the restarted daemon (its own log), so QEMU reconnected.
    grep -q "RELEASE" /run/nested-helper.2.log && ok "the restarted helper served QEMU's next PR OUT" || ko "restarted helper log" "$(cat /run/nested-helper.2.log)"
  else
    ko "L2 phase 2" "did not finish: $(tr -d '\r' < $log | tail -5)"
  fi
else
  ko "L2 phase 1" "did not finish: $(tr -d '\r' < $log 2>/dev/null | tail -5) $(tail -3 /run/nested-qemu.out)"
fi
kill $qp 2>/dev/null; wait $qp 2>/dev/null
kill $hp 2>/dev/null
echo "lab: nested scenario took $(( $(date +%s) - t0 ))s"
