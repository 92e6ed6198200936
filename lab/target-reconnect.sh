#!/usr/bin/env bash
# pr-target restarted under a running guest (run on the host by lab/run): QEMU 10 from
# bookworm-backports (lab/build-qemu10; Debian 12's 7.2 cannot reconnect a vhost-user-scsi
# device) boots the 6.1 lab guest with two vhost-user-scsi controllers whose chardevs say
# `reconnect-ms=`, on one pr-target LU shared by two sockets (two initiators). Inside,
# lab/target-reconnect-guest.sh registers node 1 and reserves WRITE EXCLUSIVE - REGISTRANTS
# ONLY, then twice asks the host (a line on the console) to take the target away: first with
# SIGKILL (no drain), then with SIGTERM (drain, flush, exit 0). While pr-target is down the
# guest submits a write (in flight in the guest's block layer before the host restarts the
# target); the host starts a new pr-target on the same configuration, QEMU reconnects by
# itself, and the guest checks that the write completed, the keys and the reservation are
# still there, PR OUT works, and node 2 is still fenced. The host checks the written blocks in
# the backing file and the store after the last exit.
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${PR_TARGET_BIN:-$top/target/release/pr-target}
ctl=${PR_CTL_BIN:-$(dirname "$bin")/pr-ctl}
timeout_s=${LAB_TIMEOUT_RECONNECT:-600}
pass=0; fail=0
ok() { echo "PASS reconnect: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL reconnect: $*"; fail=$((fail + 1)); }
out=$(LAB_KERNEL=6 "$top/lab/build-initramfs" | tail -1)
if ! qemu=$("$top/lab/build-qemu10" | tail -1) || [ ! -x "$qemu" ]; then
  ko "QEMU 10 could not be unpacked (lab/build-qemu10)"; echo "LAB-RESULT $pass $fail"; exit 0
fi
work=$top/build/target-reconnect
rm -rf "$work"; mkdir -p "$work"
truncate -s 64M "$work/disk.img"
# The data the guest writes while the target is down (read by the guest over 9p): 16 blocks
# of 4 KiB each, different for the two rounds.
yes WRITTEN-WHILE-KILLED | head -c 65536 > "$work/pattern-kill" || true
yes WRITTEN-WHILE-TERMINATED | head -c 65536 > "$work/pattern-term" || true
cat > "$work/target.toml" <<CONF
store = "$work/reservations.db"

[[lu]]
name = "shared0"
path = "$work/disk.img"
block_size = 512
naa = "6001405a1b2c3d4e5f60718293a4b5c7"
serial = "PRT-RECONNECT"

[[socket]]
path = "$work/node1.sock"
initiator = "iqn.2026-12.org.pr-helper:reconnect.node1"
relative_target_port = 1
request_queues = 2
luns = { 0 = "shared0" }

[[socket]]
path = "$work/node2.sock"
initiator = "iqn.2026-12.org.pr-helper:reconnect.node2"
relative_target_port = 2
request_queues = 2
luns = { 0 = "shared0" }
CONF
chown -R nobody:nogroup "$work"
as_nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs)
tpid=; qpid=
cleanup() {
  [ -n "$tpid" ] && kill "$tpid" 2>/dev/null || true
  [ -n "$qpid" ] && kill "$qpid" 2>/dev/null || true
}
trap cleanup EXIT
log=$work/console.log
# diagnose: what a failing step needs to be understood from the CI output alone.
diagnose() {
  echo "  | console (last 15 lines):"; tr -d '\r' < "$log" 2>/dev/null | tail -15 | sed 's/^/  |   /'
  for f in "$work"/target-*.log; do
    [ -e "$f" ] && { echo "  | $(basename "$f") (last 5 lines):"; tail -5 "$f" | sed 's/^/  |   /'; }
  done
}
finish() {
  cleanup; trap - EXIT
  if grep -qiE "panicked|RUST_BACKTRACE" "$work"/target-*.log 2>/dev/null; then ko "pr-target panicked (see $work/target-*.log)"; fi
  echo "LAB-RESULT $pass $fail"; exit 0
}
# start_target N: pr-target as nobody under its seccomp list, logging to target-N.log; waits
# (bounded) until it is ready.
start_target() {
  local l=$work/target-$1.log
  "${as_nobody[@]}" "$bin" --config "$work/target.toml" --seccomp "${PR_TARGET_SECCOMP:-kill}" 2> "$l" &
  tpid=$!
  for _ in $(seq 600); do
    grep -q "ready" "$l" 2>/dev/null && return 0
    kill -0 "$tpid" 2>/dev/null || break
    sleep 0.05
  done
  ko "pr-target (start $1) did not become ready within 30 s: $(tail -3 "$l" | tr '\n' ' ')"
  return 1
}
deadline=$(( $(date +%s) + timeout_s ))
# wait_console LINE: waits until the guest prints LINE, QEMU exits, or the deadline passes.
wait_console() {
  while [ "$(date +%s)" -lt "$deadline" ]; do
    tr -d '\r' < "$log" 2>/dev/null | grep -qF -- "$1" && return 0   # anywhere: a kernel message may share the line
    kill -0 "$qpid" 2>/dev/null || { ko "QEMU exited before the guest printed '$1'"; diagnose; return 1; }
    sleep 0.2
  done
  ko "the guest did not print '$1' within ${timeout_s}s of the start"; diagnose; return 1
}
start_target 1 || finish
ok "pr-target serves two sockets ($("$qemu" --version | head -1))"
# The guest: QEMU 10, both controllers on chardevs that reconnect every 500 ms.
start=$(date +%s)
timeout --kill-after=10 "$timeout_s" "$qemu" -accel tcg -cpu max -m 1024 -smp 2 \
  -nographic -no-reboot -kernel "$out/vmlinuz" -initrd "$out/initrd.img" \
  -append "console=ttyS0 quiet no_timer_check panic=-1 labscript=$top/lab/target-reconnect-guest.sh labverbose=${LAB_VERBOSE:-0}" \
  -fsdev local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hr,mount_tag=hostroot \
  -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
  -chardev socket,id=c0,path="$work/node1.sock",reconnect-ms=500 -device vhost-user-scsi-pci,chardev=c0,num_queues=2,addr=0x10 \
  -chardev socket,id=c1,path="$work/node2.sock",reconnect-ms=500 -device vhost-user-scsi-pci,chardev=c1,num_queues=2,addr=0x11 \
  ${RECONNECT_QEMU_ARGS:-} > "$log" 2>&1 &
qpid=$!
# One round: the guest asks, the host takes pr-target away with SIGNAL, tells the guest, waits
# until the guest has a write in flight, starts a new pr-target and tells the guest.
round() {
  local name=$1 sig=$2 n=$3 rc=0
  wait_console "RECONNECT-DOWN $name" || return 1
  kill "-$sig" "$tpid"
  wait "$tpid" || rc=$?
  tpid=
  if [ "$sig" = KILL ]; then
    [ "$rc" = 137 ] && ok "$name: pr-target killed by SIGKILL under the running guest" \
      || ko "$name: pr-target exited $rc on SIGKILL, not 137"
  else
    if [ "$rc" = 0 ] && grep -q "clean shutdown" "$work/target-$((n - 1)).log"; then
      ok "$name: SIGTERM under the running guest: pr-target drained, flushed and exited 0"
    else
      ko "$name: pr-target exited $rc on SIGTERM ($(tail -2 "$work/target-$((n - 1)).log" | tr '\n' ' '))"
    fi
  fi
  touch "$work/down-$name"
  wait_console "RECONNECT-ISSUED $name" || return 1
  start_target "$n" || return 1
  touch "$work/up-$name"
}
round kill KILL 2 && round term TERM 3 || true
if wait "$qpid"; then :; fi
qpid=
echo "reconnect: guest run took $(( $(date +%s) - start ))s"
tr -d '\r' < "$log" | grep -E '^(PASS |FAIL |  \| )' || true
result=$(tr -d '\r' < "$log" | sed -n 's/^LAB-RESULT \([0-9]*\) \([0-9]*\)$/\1 \2/p' | tail -1)
if ! grep -q "LAB-BOOTED" "$log"; then
  ko "the QEMU 10 guest did not boot (see $log)"; diagnose
elif [ -z "$result" ]; then
  ko "the guest script did not finish within ${timeout_s}s (see $log)"; diagnose
  pass=$((pass + $(tr -d '\r' < "$log" | grep -c '^PASS ' || true)))
  fail=$((fail + $(tr -d '\r' < "$log" | grep -c '^FAIL ' || true)))
else
  set -- $result
  pass=$((pass + $1)); fail=$((fail + $2))
  [ "$1" -gt 0 ] || ko "the guest ran no checks"
fi
# On the host: the writes submitted while the target was down are in the backing file (blocks
# 100.. and 200.. of 4 KiB, lab/target-reconnect-guest.sh).
for r in kill:100 term:200; do
  if dd if="$work/disk.img" bs=4096 skip="${r#*:}" count=16 status=none | cmp -s - "$work/pattern-${r%:*}"; then
    ok "host: the write submitted while pr-target was down (${r%:*}) is in the backing file"
  else
    ko "host: blocks ${r#*:}.. of the backing file are not the guest's write of the ${r%:*} round"
  fi
done
# The last pr-target ends cleanly, and the store holds what the guest left.
if [ -n "$tpid" ]; then
  kill -TERM "$tpid"; rc=0; wait "$tpid" || rc=$?; tpid=
  [ "$rc" = 0 ] || ko "the last pr-target exited $rc on SIGTERM"
fi
shown=$("$ctl" store --store "$work/reservations.db" show shared0 2>&1 || true)
if printf '%s\n' "$shown" | grep -qE 'key 0xa( |$)' && printf '%s\n' "$shown" | grep -qE 'key 0xb( |$)'; then
  ok "after the last exit the store holds both registrations (pr-ctl store show)"
else
  ko "after the last exit the store shows: $(printf '%s' "$shown" | head -5 | tr '\n' ' ')"
fi
finish
