#!/bin/bash
# Runs inside each of the two lab guests of lab/target-multihost.sh (labrole=a or labrole=b on
# the kernel command line): one vhost-user-scsi disk (PCI slot 10h) served by host A's or host
# B's pr-target, one LU on one etcd store. The host and the guests take turns: a guest prints
# "XH-..." lines on its console, the host creates files in the work directory (read here over
# 9p). Guest A: REGISTER 0xa, RESERVE WRITE EXCLUSIVE - REGISTRANTS ONLY, then PREEMPT (round
# 1) and PREEMPT AND ABORT (round 2) of 0xb when the host says so. Guest B: REGISTER 0xb and
# write numbered blocks until 10 writes issued after A's PREEMPT returned were refused; round 2
# under a partition of host B from etcd, then READ KEYS while partitioned and after the heal.
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
WORK=$TOP/build/target-multihost
# shellcheck source=lab/target-common.sh
. "$TOP/lab/target-common.sh"
role=$(sed -n 's/.*labrole=\([ab]\).*/\1/p' /proc/cmdline)
tc_init "multihost $role"
finish() { echo "LAB-RESULT $pass $fail"; exit 0; }
[ -n "$role" ] || { ko "no labrole=a|b on the kernel command line"; finish; }
# wait_file NAME SECONDS: until the host creates NAME in the work directory.
wait_file() {
  local i
  for i in $(seq $(( $2 * 10 ))); do [ -e "$WORK/$1" ] && return 0; sleep 0.1; done
  ko "the host did not create $1 within $2 s"; return 1
}
D=
for _ in $(seq 300); do D=$(disk_at 10); [ -n "$D" ] && [ -b "$D" ] && break; sleep 0.1; done
if [ -z "$D" ]; then
  ko "no disk on the vhost-user-scsi controller ($(ls /sys/block | tr '\n' ' '))"
  dmesg | grep -iE "scsi|virtio" | tail -20 | sed 's/^/  | /'
  finish
fi
ok "host $role's pr-target serves $D"
pr() { sg_persist --no-inquiry "$@" "$D" >/run/pr.out 2>&1; }
# Reports pending unit attentions (TEST UNIT READY), at most a few, before PR commands.
settle() { local i; for i in 1 2 3 4; do sg_turs "$D" >/dev/null 2>&1 && return 0; done; return 1; }
keys() { sg_persist --no-inquiry --in --read-keys "$D" 2>/dev/null | grep -oE '^ +0x[0-9a-f]+' | tr -d ' ' | tr '\n' ' '; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
# classify: the outcome of the sg_raw command whose exit status is $1 and output /run/raw.out:
# good, conflict (RESERVATION CONFLICT), lucf (CHECK CONDITION, LOGICAL UNIT COMMUNICATION
# FAILURE), ua (CHECK CONDITION, UNIT ATTENTION) or other.
classify() {
  if grep -qi "reservation conflict" /run/raw.out; then echo conflict
  elif grep -qi "communication failure" /run/raw.out; then echo lucf
  elif grep -qi "unit attention" /run/raw.out; then echo ua
  elif [ "$1" = 0 ] && ! grep -qi "check condition" /run/raw.out; then echo good
  else echo other
  fi
}
# write_block I ROUND: one 4 KiB block (WRITE(10), 8 blocks of 512 bytes at LBA 8*I) holding
# "XHOST-B round ROUND block I", through SG_IO: it reaches pr-target and its status comes back.
write_block() {
  local lba=$(( $1 * 8 )) rc=0
  printf '%-4095s\n' "XHOST-B round $2 block $1" > /run/blk
  sg_raw -s 4096 -i /run/blk "$D" 2a 00 $(printf '%02x %02x %02x %02x' $(( lba >> 24 & 255 )) \
    $(( lba >> 16 & 255 )) $(( lba >> 8 & 255 )) $(( lba & 255 ))) 00 00 08 00 >/run/raw.out 2>&1 || rc=$?
  classify "$rc"
}

if [ "$role" = a ]; then
  settle
  pr --out --register --param-sark=0xa && pr --out --reserve --param-rk=0xa --prout-type=5 \
    && ok "A registered 0xa and holds WRITE EXCLUSIVE - REGISTRANTS ONLY" \
    || { ko "A's REGISTER/RESERVE: $(cat /run/pr.out)"; finish; }
  echo "XH-A-RESERVED"
  for r in 1 2; do
    wait_file "preempt-$r" 300 || finish
    [ "$r" = 1 ] && sa=--preempt || sa=--preempt-abort
    t0=$(ms); rc=0
    pr --out "$sa" --param-rk=0xa --param-sark=0xb --prout-type=5 || rc=$?
    t=$(( $(ms) - t0 ))
    echo "XH-A-PREEMPTED $r rc=$rc ms=$t"
    [ "$r" = 1 ] && what="PREEMPT of 0xb (host B in contact)" || what="PREEMPT AND ABORT of 0xb (host B partitioned)"
    [ "$rc" = 0 ] && ok "round $r: $what returned GOOD in $t ms" \
      || ko "round $r: $what failed ($rc) after $t ms: $(tr '\n' ' ' < /run/pr.out)"
    settle
    k=$(keys)
    [ "$k" = "0xa " ] && ok "round $r: READ KEYS on host A: 0xa only" || ko "round $r: READ KEYS on host A: '$k', expected '0xa '"
  done
  wait_file done 300
  finish
fi

# Guest B.
wait_file reserved 300 || finish
i=0
# writer ROUND: writes blocks i+1, i+2, ... until 10 writes issued after the host saw A's
# PREEMPT return were refused as expected (at most 4000 writes or 300 s), counting outcomes
# before and after that moment; prints "XH-B-STOPPED ROUND ..." with the counts.
writer() {
  local r=$1 after=0 o good=0 before_ref=0 last_good=0 t_end=$(( $(date +%s) + 300 )) n=0
  local a_good=0 a_conflict=0 a_lucf=0 a_ua=0 a_other=0 first_other=
  # Round 1 ends on 10 RESERVATION CONFLICTs (LOGICAL UNIT COMMUNICATION FAILURE, a lapse of
  # B's lease on a loaded host, is a refusal too, counted, not what ends it), round 2 on 10
  # LOGICAL UNIT COMMUNICATION FAILUREs; a GOOD write or another answer after the PREEMPT ends
  # it at once.
  local want=a_conflict
  [ "$r" = 2 ] && want=a_lucf
  unexpected() {
    if [ "$r" = 1 ]; then echo $(( a_good + a_other + (a_ua > 1) + (a_lucf > 50) ))
    else echo $(( a_good + a_other + a_conflict + a_ua )); fi
  }
  while [ "${!want}" -lt 10 ] && [ "$(unexpected)" = 0 ]; do
    [ "$n" -lt 4000 ] && [ "$(date +%s)" -lt "$t_end" ] || { ko "round $r: B's writer ended after $n writes without 10 refusals after the PREEMPT"; break; }
    n=$((n + 1)); i=$((i + 1))
    [ -e "$WORK/preempted-$r" ] && after=1
    o=$(write_block "$i" "$r")
    if [ "$after" = 0 ]; then
      if [ "$o" = good ]; then
        good=$((good + 1)); last_good=$i
        [ "$good" = 5 ] && echo "XH-B-WRITING $r"
      else
        before_ref=$((before_ref + 1))
      fi
    else
      case $o in
        good) a_good=$((a_good + 1)); last_good=$i;;
        conflict) a_conflict=$((a_conflict + 1));;
        lucf) a_lucf=$((a_lucf + 1));;
        ua) a_ua=$((a_ua + 1));;
        *) a_other=$((a_other + 1)); [ -n "$first_other" ] || first_other=$(tr '\n' ' ' < /run/raw.out | cut -c1-200);;
      esac
    fi
  done
  echo "XH-B-STOPPED $r last_good=$last_good good=$good refused_before=$before_ref after=$((a_good + a_conflict + a_lucf + a_ua + a_other)) a_good=$a_good a_conflict=$a_conflict a_lucf=$a_lucf a_ua=$a_ua a_other=$a_other"
  stats="$good GOOD before, then $a_conflict RESERVATION CONFLICT, $a_lucf LU COMMUNICATION FAILURE, $a_ua UNIT ATTENTION, $a_good GOOD, $a_other other${first_other:+ (first: $first_other)}"
  case $r in
    1) [ "$(unexpected)" = 0 ] && [ "$a_conflict" -ge 10 ] \
         && ok "round 1: after A's PREEMPT every write of B's was refused, 10 with RESERVATION CONFLICT ($stats)" \
         || ko "round 1: B's writes after A's PREEMPT: $stats";;
    2) [ "$(unexpected)" = 0 ] && [ "$a_lucf" -ge 10 ] \
         && ok "round 2: partitioned host B refused every write by itself with CHECK CONDITION, LOGICAL UNIT COMMUNICATION FAILURE ($stats)" \
         || ko "round 2: partitioned B's writes after A's PREEMPT AND ABORT: $stats";;
  esac
}
settle
pr --out --register --param-sark=0xb && ok "B registered 0xb" || { ko "B's REGISTER: $(cat /run/pr.out)"; finish; }
writer 1
wait_file next-1 300 || finish
settle
pr --out --register --param-sark=0xb && ok "round 2: B, preempted, registered 0xb again" \
  || { ko "round 2: B's REGISTER: $(cat /run/pr.out)"; finish; }
writer 2
# Still partitioned: READ KEYS is CHECK CONDITION within the store's command timeout (3 s)
# and a second, never an answer from B's stale state (which still holds 0xb).
t0=$(ms); rc=0
sg_raw -r 256 "$D" 5e 00 00 00 00 00 00 01 00 00 >/run/raw.out 2>&1 || rc=$?
t=$(( $(ms) - t0 )); o=$(classify "$rc")
if [ "$o" = lucf ] && [ "$t" -lt 10000 ]; then
  ok "round 2: partitioned host B answers READ KEYS with CHECK CONDITION, LOGICAL UNIT COMMUNICATION FAILURE in $t ms"
else
  ko "round 2: partitioned host B's READ KEYS: $o after $t ms: $(tr '\n' ' ' < /run/raw.out | cut -c1-300)"
fi
echo "XH-B-PRIN-CHECKED 2"
wait_file healed 300 || finish
# After the heal: the current state (A's key only), within 60 s.
k=; t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt 60 ]; do
  settle
  if sg_persist --no-inquiry --in --read-keys "$D" >/run/pr.out 2>&1; then k=$(keys); break; fi
  sleep 0.5
done
[ "$k" = "0xa " ] && ok "after the heal host B answers READ KEYS with the current state: 0xa only" \
  || ko "after the heal host B's READ KEYS: '$k' ($(tr '\n' ' ' < /run/pr.out | cut -c1-200))"
# And its writes now conflict: a unit attention for the preemption may come first, and LOGICAL
# UNIT COMMUNICATION FAILURE until host B's first renewal round after the heal (within 30 s).
o=; t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt 30 ]; do
  i=$((i + 1)); o=$(write_block "$i" 3)
  case $o in ua|lucf) sleep 0.2;; *) break;; esac
done
[ "$o" = conflict ] && ok "after the heal B's write is refused with RESERVATION CONFLICT" \
  || ko "after the heal B's write: $o ($(tr '\n' ' ' < /run/raw.out | cut -c1-200))"
echo "XH-B-DONE"
finish
