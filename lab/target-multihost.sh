#!/usr/bin/env bash
# Cross-host fencing by content (run on the host by lab/run; alone:
# PR_TARGET_BIN=target/release/pr-target lab/target-multihost.sh). Two "hosts" on this
# machine: a 3-member etcd cluster on loopback (pr-etcd-cluster), and two pr-target processes,
# host A and host B (host_id host-a / host-b, each its own etcd client, both as nobody under
# their seccomp filter), serving one backing file as one LU on the etcd store. Host B reaches
# etcd only through TCP proxies that this script cuts (packets lost, nothing closed: a
# partition, not a process kill). Two TCG guests at once, guest A on host A's socket and guest
# B on host B's, run lab/target-multihost-guest.sh: A registers 0xa and holds WRITE EXCLUSIVE
# - REGISTRANTS ONLY, B registers 0xb and writes numbered blocks (SG_IO WRITE(10), each one
# reaching pr-target; block i holds "XHOST-B round R block i" at 4 KiB block i).
#   Round 1 (normal): A PREEMPTs 0xb. The moment A's command returns (its console line), this
#   script records B's highest block in the backing file; B keeps writing until 10 writes
#   issued after that were refused (RESERVATION CONFLICT); then the file must hold no block of
#   B's above the record, and B's last GOOD write must be the record.
#   Round 2 (partition): B registers again and writes; B's etcd access is cut; A PREEMPTs AND
#   ABORTs 0xb, which returns only once B's lease is gone from etcd (checked here); B's
#   pr-target refuses media I/O by itself (CHECK CONDITION, LOGICAL UNIT COMMUNICATION
#   FAILURE); the same file check; B's READ KEYS answers CHECK CONDITION in bounded time; after
#   the heal B answers the current state (0xa only) and its writes conflict.
# Prints PASS/FAIL lines and "LAB-RESULT <passed> <failed>".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export PR_TARGET_BIN=${PR_TARGET_BIN:-$top/target/release/pr-target}
harness=${PR_ETCD_CLUSTER_BIN:-$(dirname "$PR_TARGET_BIN")/pr-etcd-cluster}
timeout_s=${LAB_TIMEOUT_MULTIHOST:-600}
# shellcheck source=lab/target-common.sh
. "$top/lab/target-common.sh"
tc_init multihost
start_all=$(date +%s)
work=$top/build/target-multihost
rm -rf "$work"; mkdir -p "$work"
epid=; apid=; bpid=; qa=; qb=; etcd_pids=; etcd_logs=; diagnosed=
# stop_all: every process this script started, by its pid; etcd last (the harness stops its
# members on end of input or SIGTERM; their pids are killed too if it did not).
stop_all() {
  local p
  for p in $qa $qb; do kill "$p" 2>/dev/null || true; done
  for p in $apid $bpid; do kill -TERM "$p" 2>/dev/null || true; done
  if [ -n "$epid" ]; then
    kill -TERM "$epid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$epid" 2>/dev/null || break; sleep 0.05; done
    # Only if the harness did not stop its members itself (it is gone once it has).
    if kill -0 "$epid" 2>/dev/null; then
      kill -KILL "$epid" 2>/dev/null || true
      for p in $etcd_pids; do kill -KILL "$p" 2>/dev/null || true; done
    fi
  fi
  for p in $qa $qb $apid $bpid; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
  done
  qa=; qb=; apid=; bpid=; epid=; etcd_pids=
}
trap stop_all EXIT
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
# diagnose: the tails of both consoles and both pr-target logs, for a failure read in CI.
diagnose() {
  local f
  diagnosed=1
  for f in "$work/console-a.log" "$work/console-b.log"; do
    [ -e "$f" ] && { echo "  | $(basename "$f") (last 15 lines):"; tr -d '\r' < "$f" | grep -v '^$' | tail -15 | sed 's/^/  |   /'; }
  done
  for f in "$work/target-a.log" "$work/target-b.log" "$work/etcd-cluster.log" $etcd_logs; do
    [ -e "$f" ] && { echo "  | $f (last 8 lines):"; tail -8 "$f" | sed 's/^/  |   /'; }
  done
  return 0
}
finish() {
  if grep -qiE "panicked|RUST_BACKTRACE" "$work"/target-*.log 2>/dev/null; then ko "pr-target panicked (see $work/target-*.log)"; fi
  # A failure in a guest, or one here that did not print them yet: the tails, once.
  [ "$fail" = 0 ] || [ -n "$diagnosed" ] || diagnose
  stop_all; trap - EXIT INT TERM
  echo "multihost: $(( $(date +%s) - start_all ))s in all"
  echo "LAB-RESULT $pass $fail"; exit 0
}
[ -x "$harness" ] || { ko "no $harness (cargo build --release -p pr-store-etcd)"; finish; }
out=$(LAB_KERNEL=6 "$top/lab/build-initramfs" | tail -1)
export TC_BOOT_DIR=$out TC_TIMEOUT=$timeout_s

# The etcd cluster, its members on loopback addresses nobody else uses; the harness reads
# commands from this script (a coprocess: it sees end of input when the script goes away).
coproc ETCD { exec "$harness" --members 3 2> "$work/etcd-cluster.log"; }
epid=$ETCD_PID
etcd_in=${ETCD[1]}; etcd_out=${ETCD[0]}   # bash keeps them from the processes started later
endpoints=; proxied=
while :; do
  line=
  if ! read -r -t 60 line <&"$etcd_out"; then
    ko "the etcd cluster did not start within 60 s"; diagnose; finish
  fi
  case $line in
    endpoints\ *) endpoints=${line#endpoints };;
    proxied\ *) proxied=${line#proxied };;
    pids\ *) etcd_pids=${line#pids };;
    logs\ *) etcd_logs=${line#logs };;
    ready) break;;
  esac
done
# etcd_cmd CMD: one command to the harness, its answer in $reply (15 s at most).
etcd_cmd() {
  reply=
  # (A write to a harness that is gone would end this script by SIGPIPE, past its traps.)
  kill -0 "$epid" 2>/dev/null || { reply="error: pr-etcd-cluster is gone"; return 0; }
  echo "$1" >&"$etcd_in"
  read -r -t 15 reply <&"$etcd_out" || reply="error: no answer from pr-etcd-cluster within 15 s"
}
ok "a 3-member etcd cluster on loopback ($endpoints), host B through proxies ($proxied)"
toml_list() { echo "$1" | sed 's/[^,]*/"&"/g; s/,/, /g'; }
prefix="/xhost-$$/"
truncate -s 64M "$work/disk.img"
# host_conf HOST ENDPOINTS RTP: one host's pr-target configuration.
host_conf() {
  cat > "$work/$1.toml" <<CONF
[store]
kind = "etcd"
endpoints = [$(toml_list "$2")]
prefix = "$prefix"
host_id = "$1"
command_timeout_ms = 3000

[[lu]]
name = "shared0"
path = "$work/disk.img"
block_size = 512
naa = "6001405a1b2c3d4e5f60718293a4b5c8"
serial = "PRT-XHOST0"

[[socket]]
path = "$work/$1.sock"
initiator = "iqn.2026-12.org.pr-helper:xhost.$1"
relative_target_port = $3
request_queues = 1
luns = { 0 = "shared0" }
CONF
}
host_conf host-a "$endpoints" 1
host_conf host-b "$proxied" 2
chown -R nobody:nogroup "$work"
up=yes
tc_start_target "$work/target-a.log" "$work/host-a.toml" || up=no
apid=$tc_pid
[ "$up" = yes ] || { diagnose; finish; }
tc_start_target "$work/target-b.log" "$work/host-b.toml" || up=no
bpid=$tc_pid
[ "$up" = yes ] || { diagnose; finish; }
if grep -q "shared with other hosts under the lease fence" "$work/target-a.log" \
   && grep -q "shared with other hosts under the lease fence" "$work/target-b.log"; then
  ok "host A and host B serve one backing file as one LU under their lease fences, as $(ps -o user= -p "$apid") and $(ps -o user= -p "$bpid")"
else
  ko "the LU is not shared under the lease fence on both hosts"; diagnose; finish
fi

# Both guests at once.
guest=$top/lab/target-multihost-guest.sh
tc_boot "$work/console-a.log" "$work/host-a.sock" "$guest" "labrole=a"; qa=$tc_pid
tc_boot "$work/console-b.log" "$work/host-b.sock" "$guest" "labrole=b"; qb=$tc_pid
deadline=$(( $(date +%s) + timeout_s ))
# wait_line LOG PATTERN WHAT: waits until the console LOG has a line matching the extended
# regular expression PATTERN (printed in $found), its QEMU exits, or the deadline passes.
wait_line() {
  local log=$1 pat=$2
  found=
  while [ "$(date +%s)" -lt "$deadline" ]; do
    found=$(tr -d '\r' < "$log" 2>/dev/null | grep -oE -- "$pat" | head -1) || true
    [ -n "$found" ] && return 0
    if ! kill -0 "$qa" 2>/dev/null || ! kill -0 "$qb" 2>/dev/null; then
      sleep 0.5   # a guest ending: its last lines may still be on their way
      found=$(tr -d '\r' < "$log" 2>/dev/null | grep -oE -- "$pat" | head -1) || true
      [ -n "$found" ] && return 0
      ko "a guest ended before $(basename "$log") showed '$3'"; diagnose; return 1
    fi
    sleep 0.05
  done
  ko "$(basename "$log") did not show '$3' within ${timeout_s}s of the start"; diagnose; return 1
}
# b_blocks ROUND: "<count> <highest>" of B's blocks of ROUND in the backing file; a block not
# at its own position (4 KiB block i holding number i) is reported as "misplaced".
b_blocks() {
  { grep -aob "XHOST-B round $1 block [0-9]*" "$work/disk.img" || true; } | awk -F: -v r="$1" '
    { n = $2; sub(/.* block /, "", n); n += 0
      if ($1 != n * 4096) { print "misplaced " $1 " " n; bad = 1; exit }
      c++; if (n > max) max = n }
    END { if (!bad) print c + 0, max + 0 }'
}
# field LINE NAME: the value of NAME=... in LINE.
field() { echo "$1" | sed -n "s/.* $2=\([^ ]*\).*/\1/p"; }

round() {
  local r=$1 what=$2 rec max_now stopped last_good n keys
  # A preempts once B has written a few blocks.
  wait_line "$work/console-b.log" "XH-B-WRITING $r" "B writing (round $r)" || return 1
  if [ "$what" = partition ]; then
    etcd_cmd cut
    [ "$reply" = "ok cut" ] || { ko "round $r: cutting B's etcd access: $reply"; return 1; }
    ok "round $r: host B's etcd access cut (its proxies forward nothing)"
  fi
  touch "$work/preempt-$r"
  wait_line "$work/console-a.log" "XH-A-PREEMPTED $r [^ ]+ [^ ]+" "A's PREEMPT returned (round $r)" || return 1
  # The moment A's command returned: B's highest block in the file.
  rec=$(b_blocks "$r")
  touch "$work/preempted-$r"
  etcd_cmd "keys ${prefix}hosts/"
  case $what in
    normal)
      echo "$reply" | grep -q " ${prefix}hosts/host-b#" \
        && ok "round $r: when A's PREEMPT returned, host B's lease was still in etcd (B acknowledged the change)" \
        || ko "round $r: host B's key was not in etcd when A's PREEMPT returned: $reply";;
    partition)
      if echo "$reply" | grep -q " ${prefix}hosts/host-b#"; then
        ko "round $r: A's PREEMPT returned while partitioned host B's lease was still in etcd: $reply"
      elif echo "$reply" | grep -q " ${prefix}hosts/host-a#"; then
        ok "round $r: A's PREEMPT returned only after partitioned host B's lease was gone from etcd"
      else
        ko "round $r: reading the hosts' keys: $reply"
      fi;;
  esac
  case $rec in
    misplaced*) ko "round $r: a block of B's is not at its own position: $rec"; return 1;;
  esac
  set -- $rec
  [ "$1" -gt 0 ] || { ko "round $r: no block of B's in the backing file before the PREEMPT"; return 1; }
  # B goes on until 10 of its writes issued after that moment were refused.
  wait_line "$work/console-b.log" "XH-B-STOPPED $r .*" "B stopped writing (round $r)" || return 1
  stopped=$found
  max_now=$(b_blocks "$r")
  last_good=$(field "$stopped" last_good)
  if [ "$max_now" = "$rec" ] && [ "${rec#* }" = "$last_good" ]; then
    ok "round $r: after A's PREEMPT returned no block of B's reached the file ($1 blocks, the last one $last_good, B's last GOOD write; then $(field "$stopped" after) writes refused)"
  else
    ko "round $r: B's blocks in the file were '$rec' when A's PREEMPT returned and are '$max_now' after $(field "$stopped" after) more writes from B (B's last GOOD write: $last_good)"
    diagnose
  fi
}
wait_line "$work/console-a.log" "XH-A-RESERVED" "A registered and reserved" || { tc_count "$work/console-a.log" || true; tc_count "$work/console-b.log" || true; finish; }
touch "$work/reserved"
round 1 normal || { tc_count "$work/console-a.log" || true; tc_count "$work/console-b.log" || true; finish; }
touch "$work/next-1"
round 2 partition || { tc_count "$work/console-a.log" || true; tc_count "$work/console-b.log" || true; finish; }
# B has checked its PR IN while partitioned; heal, and B checks it answers the current state.
if ! wait_line "$work/console-b.log" "XH-B-PRIN-CHECKED 2" "B's PR IN under the partition"; then
  tc_count "$work/console-a.log" || true; tc_count "$work/console-b.log" || true; finish
fi
etcd_cmd heal
[ "$reply" = "ok heal" ] && ok "host B's etcd access healed" || ko "healing B's etcd access: $reply"
touch "$work/healed"
if ! wait_line "$work/console-b.log" "XH-B-DONE" "B's checks after the heal"; then
  tc_count "$work/console-a.log" || true; tc_count "$work/console-b.log" || true; finish
fi
touch "$work/done"
for q in "$qa" "$qb"; do wait "$q" 2>/dev/null || true; done
qa=; qb=
echo "multihost: both guests ended $(( $(date +%s) - start_all ))s after the start"
tc_count "$work/console-a.log" || diagnose
tc_count "$work/console-b.log" || diagnose
# B's writes after the heal (round 3, refused in the guest) are not in the file either.
set -- $(b_blocks 3)
[ "$1" = 0 ] && ok "host: no block of B's written after the heal is in the backing file" \
  || ko "host: blocks of B's written after the heal are in the backing file: $*"
# Both hosts end cleanly on SIGTERM (drain, flush, the lease revoked).
for h in a:$apid b:$bpid; do
  p=${h#*:}; rc=0
  kill -TERM "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || rc=$?
  if [ "$rc" = 0 ] && grep -q "clean shutdown" "$work/target-${h%%:*}.log"; then
    ok "host ${h%%:*}: SIGTERM drained, flushed and exited 0"
  else
    ko "host ${h%%:*}: pr-target exited $rc on SIGTERM ($(tail -2 "$work/target-${h%%:*}.log" | tr '\n' ' '))"
  fi
done
apid=; bpid=
finish
