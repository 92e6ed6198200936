#!/bin/bash
# Runs inside the lab guest for lab/target.sh: the two vhost-user-scsi disks (PCI slots 10h
# and 11h, one pr-target LU seen by two initiators) — identification, I/O through one and
# the other, persistent reservations from both, and rounds of fencing under load: node 1
# hammers a region with writes while node 2 preempts it; once PREEMPT AND ABORT has
# returned, node 2 overwrites the region and no block of node 1 may reach the backing file
# afterwards (checked on the host file itself, read over 9p).
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
WORK=$TOP/build/target-lab
IMG=$WORK/disk.img
pass=0; fail=0
ok() { echo "PASS target: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL target: $*"; fail=$((fail + 1)); }
finish() { echo "LAB-RESULT $pass $fail"; exit 0; }
hex() { od -An -tx1 | tr -d ' \n'; }
disk_at() { # the disk behind the controller in PCI slot $1
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
phase=$(sed -n 's/.*labphase=\([^ ]*\).*/\1/p' /proc/cmdline)
pr() { sg_persist --no-inquiry "$@" >/run/pr.out 2>&1; }
# Reports pending unit attentions (TEST UNIT READY), at most a few, before PR commands.
settle() { local i; for i in 1 2 3 4; do sg_turs "$1" >/dev/null 2>&1 && return 0; done; return 1; }
keys() { sg_persist --no-inquiry --in --read-keys "$1" 2>/dev/null | grep -oE '^ +0x[0-9a-f]+' | tr -d ' ' | tr '\n' ' '; }

if [ "$phase" = reconnect ]; then
  # A new VM on the same pr-target: the state the first one left (both registered, node 1
  # holding WE-RO) and the data are there, and both registrants write.
  settle "$A"; settle "$B"
  [ "$(keys "$B")" = "0xa 0xb " ] && ok "reconnect: READ KEYS shows 0xa 0xb left by the first VM" \
    || ko "reconnect: READ KEYS '$(keys "$B")'"
  sg_persist --no-inquiry --in --read-reservation "$B" 2>&1 | grep -q "Key=0xa" \
    && sg_persist --no-inquiry --in --read-reservation "$B" 2>&1 | grep -qi "registrants only" \
    && ok "reconnect: node 1 still holds WRITE EXCLUSIVE - REGISTRANTS ONLY" \
    || ko "reconnect: READ RESERVATION: $(sg_persist --no-inquiry --in --read-reservation "$B" 2>&1 | tr '\n' ' ')"
  dd if="$B" bs=4096 skip=10 count=16 iflag=direct status=none | cmp -s - <(dd if="$IMG" bs=4096 skip=10 count=16 status=none) \
    && ok "reconnect: the first VM's data reads back" || ko "reconnect: the data differs from the backing file"
  dd if=/dev/urandom of=/run/q bs=4096 count=4 status=none
  dd if=/run/q of="$A" bs=4096 seek=30 oflag=direct conv=notrunc status=none \
    && dd if="$B" bs=4096 skip=30 count=4 iflag=direct status=none | cmp -s - /run/q \
    && ok "reconnect: both registrants write and read" || ko "reconnect: I/O failed"
  finish
fi

# Identification. Expected bytes from SPC-4's Device Identification VPD page layout: page
# 83h, length 24, an NAA designator (code set 1, association 0, type 3, 16 bytes) and a
# relative target port designator (association 1, type 4, 4 bytes) with the socket's port.
naa=6001405a1b2c3d4e5f60718293a4b5c6
for n in 1 2; do
  dev=$A; [ $n = 2 ] && dev=$B
  got=$(sg_vpd --page=0x83 --raw "$dev" | hex)
  want=0083001c01030010${naa}011400040000000$n   # page length 28 = (4 + 16) + (4 + 4)
  [ "$got" = "$want" ] && ok "node $n: VPD 83h is the NAA designator and relative target port $n" \
    || ko "node $n: VPD 83h is $got, expected $want"
done
serial=$(sg_vpd --page=0x80 --raw "$A" | tail -c +5)
[ "$serial" = PRT-SHARED0 ] && ok "VPD 80h serial is PRT-SHARED0" || ko "VPD 80h serial is '$serial'"
size=$(blockdev --getsize64 "$A")
[ "$size" = 67108864 ] && ok "capacity is 64 MiB (READ CAPACITY)" || ko "capacity is $size bytes"

# I/O: written through node 1, read back through node 2 and from the host file.
dd if=/dev/urandom of=/run/p bs=4096 count=16 status=none
if dd if=/run/p of="$A" bs=4096 seek=10 oflag=direct conv=notrunc status=none \
  && dd if="$B" bs=4096 skip=10 count=16 iflag=direct status=none | cmp -s - /run/p \
  && dd if="$IMG" bs=4096 skip=10 count=16 status=none | cmp -s - /run/p; then
  ok "64 KiB written through node 1 read back through node 2 and in the host's backing file"
else
  ko "data written through node 1 did not come back through node 2 and the host file"
fi

wr() { dd if=/run/p of="$1" bs=4096 seek=20 count=1 oflag=direct conv=notrunc status=none 2>/dev/null; }
rd() { dd if="$1" of=/dev/null bs=4096 skip=20 count=1 iflag=direct status=none 2>/dev/null; }

pr --out --register --param-sark=0xa "$A" && pr --out --register --param-sark=0xb "$B" \
  && [ "$(keys "$A")" = "0xa 0xb " ] && ok "both nodes registered; READ KEYS: 0xa 0xb" \
  || ko "registration: READ KEYS '$(keys "$A")' ($(cat /run/pr.out))"
pr --out --reserve --param-rk=0xa --prout-type=1 "$A" || ko "node 1 RESERVE WRITE EXCLUSIVE: $(cat /run/pr.out)"
wr "$B" && ko "node 2 wrote under node 1's WRITE EXCLUSIVE" || ok "node 2's write is refused under node 1's WRITE EXCLUSIVE"
rd "$B" && ok "node 2 still reads under WRITE EXCLUSIVE" || ko "node 2's read failed under WRITE EXCLUSIVE"
wr "$A" && ok "node 1, the holder, writes" || ko "node 1, the holder, cannot write"
pr --out --preempt-abort --param-rk=0xb --param-sark=0xa --prout-type=5 "$B" \
  || ko "node 2 PREEMPT AND ABORT: $(cat /run/pr.out)"
wr "$A" && ko "node 1 wrote after node 2 preempted it" || ok "node 1's write is refused once preempted"
settle "$A"
[ "$(keys "$A")" = "0xb " ] && ok "after the preemption READ KEYS from node 1 shows 0xb alone" \
  || ko "after the preemption READ KEYS: '$(keys "$A")'"
wr "$B" && ok "node 2, now holder, writes" || ko "node 2 cannot write after preempting"
pr --out --clear --param-rk=0xb "$B" && ok "node 2 CLEAR" || ko "node 2 CLEAR: $(cat /run/pr.out)"
settle "$B"; settle "$A"
wr "$A" && ok "node 1 writes again once the reservation is cleared" || ko "node 1 cannot write after CLEAR"

# Fencing under load, several rounds over 64 blocks of 4 KiB at block 4096.
base=4096
rounds=${TARGET_ROUNDS:-3}
for r in $(seq "$rounds"); do
  settle "$A"; settle "$B"
  pr --out --register-ignore --param-sark=0xa "$A" && pr --out --register-ignore --param-sark=0xb "$B" \
    && pr --out --reserve --param-rk=0xa --prout-type=5 "$A" \
    || { ko "fencing round $r: setup failed: $(cat /run/pr.out)"; continue; }
  rm -f /run/victim.done
  ( n=0
    while dd if="$WORK/victim" of="$A" bs=4096 seek=$base oflag=direct conv=notrunc status=none 2>/dev/null; do
      n=$((n + 1))
    done
    echo $n > /run/victim.done ) &
  vpid=$!
  # Wait until the victim's blocks are in the host file (bounded).
  for _ in $(seq 600); do
    dd if="$IMG" bs=4096 skip=$base count=64 status=none | grep -q VICTIM && break
    sleep 0.05
  done
  dd if="$IMG" bs=4096 skip=$base count=64 status=none | grep -q VICTIM \
    || ko "fencing round $r: the victim's writes never reached the backing file"
  pr --out --preempt-abort --param-rk=0xb --param-sark=0xa --prout-type=5 "$B" \
    || { ko "fencing round $r: PREEMPT AND ABORT failed: $(cat /run/pr.out)"; kill $vpid; continue; }
  # PREEMPT AND ABORT has returned: overwrite the whole region from node 2.
  dd if="$WORK/marker" of="$B" bs=4096 seek=$base oflag=direct conv=notrunc status=none \
    || ko "fencing round $r: node 2 could not write the region"
  for _ in $(seq 1200); do [ -e /run/victim.done ] && break; sleep 0.05; done
  if [ ! -e /run/victim.done ]; then
    kill $vpid 2>/dev/null
    ko "fencing round $r: node 1's writer still writes 60 s after it was preempted"
    continue
  fi
  wait $vpid
  if dd if="$IMG" bs=4096 skip=$base count=64 status=none | cmp -s - "$WORK/marker"; then
    ok "fencing round $r: no block of node 1 reached the backing file after PREEMPT AND ABORT returned ($(cat /run/victim.done) full passes before)"
  else
    ko "fencing round $r: $(dd if="$IMG" bs=4096 skip=$base count=64 status=none | grep -c VICTIM) victim lines in the region after PREEMPT AND ABORT returned"
  fi
  settle "$A"
  rd "$A" && ok "fencing round $r: node 1 still reads under WE-RO" || ko "fencing round $r: node 1 cannot read"
  pr --out --clear --param-rk=0xb "$B" || ko "fencing round $r: CLEAR failed: $(cat /run/pr.out)"
done
# Leave a state for the next VM (lab/target.sh boots another on the same pr-target).
settle "$A"; settle "$B"
pr --out --register --param-sark=0xa "$A" && pr --out --register --param-sark=0xb "$B" \
  && pr --out --reserve --param-rk=0xa --prout-type=5 "$A" \
  || ko "could not leave registrations for the reconnect phase: $(cat /run/pr.out)"
finish
