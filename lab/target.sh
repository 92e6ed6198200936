#!/usr/bin/env bash
# pr-target end to end (run on the host by lab/run): starts pr-target as nobody with one 64 MiB
# file LU shared by two sockets (two initiators, relative target ports 1 and 2), boots the 6.1
# lab guest with two vhost-user-scsi controllers on them (shared memfd guest memory), runs
# lab/target-guest.sh inside (I/O, persistent reservations, the fencing hammer), checks the
# backing file on the host, boots a second guest on the same pr-target (the sockets serve a
# VM again after one disconnected; its reservations are still there), and checks that SIGTERM
# drains and exits 0 with the registrations durable in the store.
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${PR_TARGET_BIN:-$top/target/release/pr-target}
ctl=${PR_CTL_BIN:-$(dirname "$bin")/pr-ctl}
timeout_s=${LAB_TIMEOUT_TARGET:-600}
pass=0; fail=0
ok() { echo "PASS target: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL target: $*"; fail=$((fail + 1)); }
finish() { echo "LAB-RESULT $pass $fail"; exit 0; }
out=$(LAB_KERNEL=6 "$top/lab/build-initramfs" | tail -1)
work=$top/build/target-lab
rm -rf "$work"; mkdir -p "$work"
truncate -s 64M "$work/disk.img"
# The data of the fencing rounds (lab/target-guest.sh reads them over 9p): 64 blocks of 4 KiB.
yes VICTIM | head -c 262144 > "$work/victim" || true   # yes ends on SIGPIPE
yes PREEMPTOR | head -c 262144 > "$work/marker" || true
cat > "$work/target.toml" <<CONF
store = "$work/reservations.db"

[[lu]]
name = "shared0"
path = "$work/disk.img"
block_size = 512
naa = "6001405a1b2c3d4e5f60718293a4b5c6"
serial = "PRT-SHARED0"

[[socket]]
path = "$work/node1.sock"
initiator = "iqn.2026-12.org.pr-helper:lab.node1"
relative_target_port = 1
request_queues = 2
luns = { 0 = "shared0" }

[[socket]]
path = "$work/node2.sock"
initiator = "iqn.2026-12.org.pr-helper:lab.node2"
relative_target_port = 2
request_queues = 2
luns = { 0 = "shared0" }
CONF
# Unprivileged: pr-target needs only its backing file, store and socket directory.
chown -R nobody:nogroup "$work"
as_nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs)
# PR_TARGET_SECCOMP=log lab/target.sh: unlisted system calls are logged (dmesg), not fatal.
"${as_nobody[@]}" "$bin" --config "$work/target.toml" --seccomp "${PR_TARGET_SECCOMP:-kill}" 2> "$work/target.log" &
tpid=$!
# Killed, the script takes the guest's QEMU (through timeout, which passes the signal on) and
# pr-target with it: the EXIT trap runs on TERM and INT too.
qpid=
trap 'kill "$tpid" $qpid 2>/dev/null || true' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
# Bounded wait for both sockets (pr-target binds them before it logs "ready").
for _ in $(seq 200); do
  grep -q "ready" "$work/target.log" 2>/dev/null && break
  kill -0 "$tpid" 2>/dev/null || break
  sleep 0.05
done
if ! grep -q "ready" "$work/target.log"; then
  ko "pr-target did not start: $(tail -3 "$work/target.log" | tr '\n' ' ')"; finish
fi
ok "pr-target listens on two sockets, running as $(ps -o user= -p "$tpid")"
# A second pr-target on the same backing file is refused (it could not fence the first).
if "${as_nobody[@]}" "$bin" --config "$work/target.toml" 2> "$work/second.log"; then
  ko "a second pr-target on the same LU started"
elif grep -q "locked by another process" "$work/second.log"; then
  ok "a second pr-target on the same backing file is refused: $(grep -o 'locked by another process[^:]*' "$work/second.log" | head -1)"
else
  ko "a second pr-target failed for another reason: $(tail -1 "$work/second.log")"
fi
log=$work/console.log
# The second instance unlinked nothing: the sockets are bound by the first (Listener::new
# unlinks only when it binds; it failed before). Check they still exist.
[ -S "$work/node1.sock" ] && [ -S "$work/node2.sock" ] || { ko "the sockets vanished"; finish; }
# boot PHASE LOG: the guest on both sockets, lab/target-guest.sh running PHASE.
boot() {
  local start
  start=$(date +%s)
  timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 \
  -nographic -no-reboot -kernel "$out/vmlinuz" -initrd "$out/initrd.img" \
  -chardev file,id=bios,path="$2.bios" -device isa-debugcon,iobase=0x402,chardev=bios \
  -append "console=ttyS0 no_timer_check panic=-1 labscript=$top/lab/target-guest.sh labphase=$1 labverbose=${LAB_VERBOSE:-0}" \
  -fsdev local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hr,mount_tag=hostroot \
  -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
  -chardev socket,id=c0,path="$work/node1.sock" -device vhost-user-scsi-pci,chardev=c0,num_queues=2,addr=0x10 \
  -chardev socket,id=c1,path="$work/node2.sock" -device vhost-user-scsi-pci,chardev=c1,num_queues=2,addr=0x11 \
  > "$2" 2>&1 &
  qpid=$!
  wait "$qpid" || true
  qpid=
  echo "target: $1 guest run took $(( $(date +%s) - start ))s"
}
# tails LOG: what a failed boot leaves to diagnose it from the CI output alone — the end of
# the guest console (the kernel log is not quiet here), of SeaBIOS's debug port and of
# pr-target's log.
tails() {
  echo "  | --- console (last 25 lines of $1)"; tr -d '\r' < "$1" | tail -25 | sed 's/^/  | /'
  echo "  | --- SeaBIOS debug port (last 10 lines)"; tail -10 "$1.bios" 2>/dev/null | sed 's/^/  | /'
  echo "  | --- pr-target log (last 15 lines)"; tail -15 "$work/target.log" | sed 's/^/  | /'
}
# count LOG: adds a guest's PASS/FAIL lines to the totals.
count() {
  local log=$1 result
  tr -d '\r' < "$log" | grep -E '^(PASS |FAIL |  \| )' || true
  result=$(tr -d '\r' < "$log" | sed -n 's/^LAB-RESULT \([0-9]*\) \([0-9]*\)$/\1 \2/p' | tail -1)
  if ! grep -q "LAB-BOOTED" "$log"; then
    ko "the guest did not boot (see $log)"
    tails "$log"
  elif [ -z "$result" ]; then
    ko "the guest script did not finish within ${timeout_s}s (see $log)"
    tails "$log"
    pass=$((pass + $(tr -d '\r' < "$log" | grep -c '^PASS ' || true)))
    fail=$((fail + $(tr -d '\r' < "$log" | grep -c '^FAIL ' || true)))
  else
    set -- $result
    pass=$((pass + $1)); fail=$((fail + $2))
    [ "$1" -gt 0 ] || ko "the guest ran no checks"
  fi
}
boot main "$log"
count "$log"
# On the host: the last fencing round left the region (blocks 4096.. of 4 KiB) all the
# preemptor's; not one victim block is in the backing file after it.
if grep -q "^PASS target: fencing round" "$log"; then
  if dd if="$work/disk.img" bs=4096 skip=4096 count=64 status=none | cmp -s - "$work/marker"; then
    ok "host: the backing file holds only the preemptor's blocks in the fenced region"
  else
    ko "host: the fenced region of the backing file differs from the preemptor's data ($(dd if="$work/disk.img" bs=4096 skip=4096 count=64 status=none | grep -c VICTIM || true) lines with VICTIM)"
  fi
else
  ko "host: no fencing round passed in the guest, nothing to check"
fi
# The same pr-target serves a new VM on both sockets (the first one disconnected).
boot reconnect "$work/console2.log"
count "$work/console2.log"
# Clean shutdown: SIGTERM drains, flushes and exits 0.
kill -TERM "$tpid"
rc=0; wait "$tpid" || rc=$?
trap - EXIT
if [ "$rc" = 0 ] && grep -q "clean shutdown" "$work/target.log"; then
  ok "SIGTERM: pr-target drained, flushed and exited 0"
else
  ko "SIGTERM: pr-target exited $rc ($(tail -2 "$work/target.log" | tr '\n' ' '))"
fi
# The registrations the second guest left are durable in the store after the exit.
shown=$("$ctl" store --store "$work/reservations.db" show shared0 2>&1 || true)
if printf '%s\n' "$shown" | grep -qE 'key 0xa( |$)' && printf '%s\n' "$shown" | grep -qE 'key 0xb( |$)'; then
  ok "after the exit the store holds both registrations (pr-ctl store show)"
else
  ko "after the exit the store shows: $(printf '%s' "$shown" | head -5 | tr '\n' ' ')"
fi
if grep -qiE "panicked|RUST_BACKTRACE" "$work/target.log"; then ko "pr-target panicked (see $work/target.log)"; fi
finish
