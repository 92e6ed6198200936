#!/bin/bash
# Runs inside the QEMU 10 lab guest for lab/target-reconnect.sh: two vhost-user-scsi disks
# (PCI slots 10h and 11h, one pr-target LU, two initiators) whose target the host kills and
# restarts while this guest runs. The host and the guest take turns: the guest prints
# "RECONNECT-DOWN <round>" on the console, the host stops pr-target and creates down-<round>
# in the work directory (read here over 9p), the guest submits a write, waits until the block
# layer has it in flight and prints "RECONNECT-ISSUED <round>", the host starts a new
# pr-target and creates up-<round>. Rounds: kill (SIGKILL), term (SIGTERM).
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
WORK=$TOP/build/target-reconnect
pass=0; fail=0
ok() { echo "PASS reconnect: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL reconnect: $*"; fail=$((fail + 1)); }
finish() { echo "LAB-RESULT $pass $fail"; exit 0; }
disk_at() {
  local d
  for d in /sys/block/sd*; do
    [ -e "$d" ] && readlink -f "$d" | grep -q "/0000:00:$1.0/" && echo "/dev/${d##*/}"
  done
}
A=; B=
for _ in $(seq 300); do
  A=$(disk_at 10); B=$(disk_at 11)
  [ -n "$A" ] && [ -n "$B" ] && [ -b "$A" ] && [ -b "$B" ] && break
  sleep 0.1
done
if [ -z "$A" ] || [ -z "$B" ]; then
  ko "the guest sees no disk on both vhost-user-scsi controllers ($(ls /sys/block | tr '\n' ' '))"
  dmesg | grep -iE "scsi|virtio" | tail -20 | sed 's/^/  | /'
  finish
fi
ok "node 1 sees $A, node 2 sees $B"
# The target is away for a few seconds per round; under TCG on a loaded host more. Give the
# SCSI layer room before it starts aborting and resetting (the default is 30 s).
for d in "$A" "$B"; do echo 120 > "/sys/block/${d#/dev/}/device/timeout"; done
pr() { sg_persist --no-inquiry "$@" >/run/pr.out 2>&1; }
settle() { local i; for i in 1 2 3 4; do sg_turs "$1" >/dev/null 2>&1 && return 0; done; return 1; }
keys() { sg_persist --no-inquiry --in --read-keys "$1" 2>/dev/null | grep -oE '^ +0x[0-9a-f]+' | tr -d ' ' | tr '\n' ' '; }
resv() { sg_persist --no-inquiry --in --read-reservation "$1" 2>&1 | tr '\n' ' '; }
wr() { dd if=/run/p of="$1" bs=4096 seek="$2" count=4 oflag=direct conv=notrunc status=none 2>/dev/null; }
same() { dd if="$1" bs=4096 skip="$2" count=4 iflag=direct status=none 2>/dev/null | cmp -s - /run/p; }
dump_dmesg() { dmesg | grep -iE "sd |scsi|virtio|reset|abort|timeout" | tail -12 | sed 's/^/  | /'; }

dd if=/dev/urandom of=/run/p bs=4096 count=4 status=none
pr --out --register --param-sark=0xa "$A" && pr --out --reserve --param-rk=0xa --prout-type=5 "$A" \
  && ok "node 1 registered 0xa and holds WRITE EXCLUSIVE - REGISTRANTS ONLY" \
  || ko "node 1 REGISTER/RESERVE: $(cat /run/pr.out)"
wr "$A" 10 && same "$B" 10 && ok "node 1 writes, node 2 reads it back" || ko "I/O before the restarts failed"
wr "$B" 11 && ko "node 2, unregistered, wrote under WE-RO" || ok "node 2, unregistered, is refused under WE-RO"

# round NAME BLOCK KEYS: one stop and restart of the target, then the checks.
round() {
  local name=$1 blk=$2 want=$3 wpid rc n
  echo "RECONNECT-DOWN $name"
  for _ in $(seq 1200); do [ -e "$WORK/down-$name" ] && break; sleep 0.1; done
  [ -e "$WORK/down-$name" ] || { ko "$name: the host did not stop pr-target within 120 s"; return 1; }
  # A write while nobody serves the queue: the guest's block layer holds it in flight.
  dd if="$WORK/pattern-$name" of="$A" bs=4096 seek="$blk" oflag=direct conv=notrunc status=none 2>/run/dd.err &
  wpid=$!
  n=0
  for _ in $(seq 600); do
    n=$(awk '{print $2}' "/sys/block/${A#/dev/}/inflight")
    [ "$n" -gt 0 ] && break
    sleep 0.05
  done
  [ "$n" -gt 0 ] && ok "$name: a write is in flight on node 1 while pr-target is down" \
    || ko "$name: the write never showed in flight (/sys/block/${A#/dev/}/inflight: $(cat "/sys/block/${A#/dev/}/inflight"))"
  echo "RECONNECT-ISSUED $name"
  for _ in $(seq 1200); do [ -e "$WORK/up-$name" ] && break; sleep 0.1; done
  [ -e "$WORK/up-$name" ] || { ko "$name: the host did not restart pr-target within 120 s"; kill "$wpid" 2>/dev/null; return 1; }
  # The write completes once QEMU has reconnected to the new pr-target (bounded: 150 s, longer
  # than the SCSI timeout set above).
  for _ in $(seq 1500); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$wpid" 2>/dev/null; then
    ko "$name: the write submitted while pr-target was down has not completed 150 s after the restart"
    dump_dmesg; kill "$wpid"; return 1
  fi
  rc=0; wait "$wpid" || rc=$?
  [ "$rc" = 0 ] && ok "$name: the write submitted while pr-target was down completed after the restart" \
    || { ko "$name: that write failed ($rc: $(cat /run/dd.err))"; dump_dmesg; }
  dd if="$A" bs=4096 skip="$blk" count=16 iflag=direct status=none | cmp -s - "$WORK/pattern-$name" \
    && ok "$name: it reads back through node 1" || ko "$name: it does not read back through node 1"
  settle "$A"; settle "$B"
  [ "$(keys "$B")" = "$want" ] && ok "$name: READ KEYS after the restart: $want" \
    || ko "$name: READ KEYS after the restart: '$(keys "$B")', expected '$want'"
  r=$(resv "$B")
  echo "$r" | grep -q "Key=0xa" && echo "$r" | grep -qi "registrants only" \
    && ok "$name: node 1 still holds WRITE EXCLUSIVE - REGISTRANTS ONLY" || ko "$name: READ RESERVATION: $r"
  dd if=/dev/urandom of=/run/p bs=4096 count=4 status=none
  wr "$A" $((blk + 20)) && same "$B" $((blk + 20)) && ok "$name: node 1 writes, node 2 reads after the restart" \
    || { ko "$name: I/O after the restart failed"; dump_dmesg; }
}
round kill 100 "0xa " || finish
# Node 2 is still fenced, and PR OUT works on the new target: it registers and writes.
wr "$B" 150 && ko "node 2, unregistered, wrote under WE-RO after the restart" \
  || ok "node 2, unregistered, is still refused under WE-RO after the restart"
pr --out --register --param-sark=0xb "$B" && wr "$B" 150 \
  && ok "node 2 registers (PR OUT on the restarted target) and writes" || ko "node 2 REGISTER/write: $(cat /run/pr.out)"
round term 200 "0xa 0xb " || finish
finish
