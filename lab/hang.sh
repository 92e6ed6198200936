#!/bin/bash
# Hung devices must not stall other clients or the accept loop. Two scsi_debug disks on a host
# that takes one command at a time stand in for hung disks: a READ answered after ~10 s holds
# the host, and every command for either disk waits behind it in the block layer. A LIO disk is
# the healthy one. Four clients' commands hang on the slow disks (two per disk, more than the
# runtime's workers) in the middle of a load on the healthy disk: that load and fresh
# connections must go on being served (no error, no request over 1 s); then every slow command
# must come back with the disk's answer. One PASS/FAIL line per check.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
. "$TOP/lab/lio.sh"
ok() { echo "PASS hang: $*"; }
bad() { echo "FAIL hang: $*"; }
log=/run/lab/hang
mkdir -p $log
mods=/run/lab-modules

for m in $(cat $mods/hang.list); do
  case $m in
    scsi_debug.ko) insmod $mods/$m num_tgts=2 dev_size_mb=8 max_queue=1 delay=1 ;;
    *) insmod $mods/$m 2>/dev/null ;;
  esac
done
slow=()
for s in $(seq 100); do
  slow=()
  for b in /sys/bus/pseudo/drivers/scsi_debug/adapter*/host*/target*/*/block/*; do
    [ -b "/dev/$(basename "$b")" ] && slow+=("/dev/$(basename "$b")")
  done
  [ ${#slow[@]} = 2 ] && break
  sleep 0.1
done
[ ${#slow[@]} = 2 ] || { bad "scsi_debug did not bring up two disks (found: ${slow[*]:-none})"; exit 0; }
lio_lu hanglu
healthy=$(lio_disk hanglu naa.50014050000e0001 naa.5001405000000e01) \
  || { bad "no LIO disk"; exit 0; }
echo "hang: slow ${slow[*]}, healthy $healthy"

sock=/run/lab/hang.sock
C="$BIN/pr-ctl --socket $sock"
"$BIN/pr-helper" -k $sock -u nobody -g nogroup -v 2>$log/helper.log &
helper=$!
for i in $(seq 50); do [ -S $sock ] && $C keys $healthy >/dev/null 2>&1 && break; sleep 0.2; done

field() { sed -n "s/^ *\"$2\": \([0-9]*\).*/\1/p" "$1" | head -1; }
# check_load JSON WHAT: the load run in JSON had no error and no request over 1 s.
check_load() {
  local requests errors max_us
  requests=$(field "$1" requests); errors=$(field "$1" errors); max_us=$(field "$1" max_us)
  : "${requests:=0}" "${errors:=?}" "${max_us:=?}"
  if [ "$requests" -ge 100 ] && [ "$errors" = 0 ] && [ "$max_us" != "?" ] && [ "$max_us" -lt 1000000 ]; then
    ok "$2: $requests requests, no error, slowest ${max_us} µs"
  else
    bad "$2: $requests requests, $errors errors, slowest ${max_us} µs: $(sed -n '/"first_errors"/,/]/p' "$1" | tr -d '\n' | head -c 300) $(head -c 300 "$1.err")"
  fi
}

# Load on the healthy disk from before the slow commands start until after they hang: the
# connections the workers are busy with when a command blocks must go on being served.
$BIN/pr-bench run -k $sock --clients 8 --duration 5 --device "$healthy" --io-timeout 5 --json \
  >$log/during.json 2>$log/during.json.err &
load=$!
sleep 1
# A READ answered after ~10 s (2500 jiffies at HZ=250; the measured time is what is checked)
# holds the host's only command slot.
echo 2500 > /sys/bus/pseudo/drivers/scsi_debug/delay
t0=$(date +%s.%N)
dd if="${slow[0]}" of=/dev/null bs=4096 count=1 iflag=direct 2>$log/dd.err &
sleep 0.5
n=0
for d in "${slow[@]}" "${slow[@]}"; do
  n=$((n + 1))
  # Each result file appears only once complete (written aside, then renamed): the checks
  # below test for existence and read at once.
  ( $C keys "$d" >$log/slow$n.out 2>&1; echo $? >$log/slow$n.rc.tmp; mv $log/slow$n.rc.tmp $log/slow$n.rc
    date +%s.%N >$log/slow$n.end.tmp; mv $log/slow$n.end.tmp $log/slow$n.end ) &
done
sleep 1
pending=0
for i in 1 2 3 4; do [ -e $log/slow$i.rc ] || pending=$((pending + 1)); done
[ $pending = 4 ] && ok "four commands on the slow disks are under way" \
  || bad "only $pending of 4 slow commands still pending after 1 s (is the delay in effect?)"

# New connections while the slow ones hang (the accept loop and fresh tasks).
$BIN/pr-bench run -k $sock --clients 4 --duration 1 --device "$healthy" --io-timeout 5 --json \
  >$log/fresh.json 2>$log/fresh.json.err
check_load $log/fresh.json "4 new connections on the healthy disk served while the slow ones hang"
timeout 5 $C keys "$healthy" >/dev/null 2>&1 \
  && ok "a further client is accepted and answered" || bad "a further client was not answered in 5 s"
wait $load
check_load $log/during.json "8 connections on the healthy disk served on while commands hung"

# The slow commands come back, with the disk's answer (scsi_debug has no persistent
# reservations: ILLEGAL REQUEST), once the READ is done. Bounded wait: 60 s.
for s in $(seq 300); do
  done_=0
  for i in 1 2 3 4; do [ -e $log/slow$i.end ] && done_=$((done_ + 1)); done
  [ $done_ = 4 ] && break
  sleep 0.2
done
[ $done_ = 4 ] || echo "hang: only $done_ of 4 slow commands came back within 60 s of the load's end"
for i in 1 2 3 4; do
  if [ -e $log/slow$i.end ]; then
    took=$(awk -v a="$t0" -v b="$(cat $log/slow$i.end)" 'BEGIN { printf "%.1f", b - a }')
    if grep -qi "illegal request" $log/slow$i.out && awk -v t="$took" 'BEGIN { exit !(t > 5) }'; then
      ok "slow command $i answered by the disk after $took s"
    else
      bad "slow command $i: after $took s: $(head -c 300 $log/slow$i.out)"
    fi
  else
    bad "slow command $i never came back"
  fi
done
echo 1 > /sys/bus/pseudo/drivers/scsi_debug/delay
kill -0 $helper 2>/dev/null && ok "the daemon is still running" || bad "the daemon died"
kill $helper; wait $helper 2>/dev/null
rmmod scsi_debug 2>/dev/null
