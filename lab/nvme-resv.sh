#!/bin/bash
# NVMe reservations for real, in the 7.x lab guest (LAB_KERNEL=7): an nvmet subsystem with
# reservations enabled (resv_enable, Linux >= 6.13) on a file-backed namespace, exposed over the
# nvme-loop transport to two host NQNs with their own host identifiers. With
# nvme_core.multipath=N on the kernel command line each host has its own controller and block
# device. Host A's commands go through our daemon (block-layer backend, chosen by itself for an
# NVMe namespace; configured for blkpr so it keeps CAP_SYS_ADMIN), host B's straight through
# nvme-cli or through the daemon too; after every step host B reads the state with
# `nvme resv-report` and with our daemon (IOC_PR_READ_KEYS / IOC_PR_READ_RESERVATION, Linux
# >= 6.19). Then the same sequence through nvme-cli alone (parity of the resulting states), a
# fence_scsi-style fencing, and what the block layer cannot express.
# One PASS/FAIL line per check; "LAB-RESULT <passed> <failed>" at the end when run as the
# guest script.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
pass=0; fail=0
ok() { echo "PASS nvme-resv: $*"; pass=$((pass+1)); }
bad() { echo "FAIL nvme-resv: $*"; fail=$((fail+1)); }
expect() { [ "$2" = "$3" ] && ok "$1" || bad "$1: expected '$2', got '$3'"; }
t0=$(date +%s)
phase() { echo "nvme-resv: $* at $(( $(date +%s) - t0 ))s"; }
finish() {
  phase "done"
  if [ $fail != 0 ]; then
    for f in ctl.err cli.out report.err dd.err; do
      [ -s $log/$f ] && tail -8 $log/$f | sed "s|^|  \| $f: |"
    done
    grep -E 'WARN|ERROR|refused' $log/daemon.log 2>/dev/null | tail -5 | sed 's/^/  | daemon: /'
  fi
  [ $fail = 0 ] || dmesg | grep -E "nvme|Call Trace" | tail -30 | sed 's/^/lab-dmesg: /'
  echo "LAB-RESULT $pass $fail"
  exit 0
}
# A condition, polled every 0.1 s for at most $1 seconds; the message says what did not happen.
wait_for() { # wait_for SECONDS WHAT COMMAND...
  local s=$1 what=$2 i; shift 2
  for i in $(seq $((s * 10))); do "$@" && return 0; sleep 0.1; done
  bad "$what did not happen within ${s}s"; return 1
}
log=/run/lab/nvme-resv
mkdir -p $log
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config

[ "$(cat /sys/module/nvme_core/parameters/multipath 2>/dev/null)" = N ] \
  && ok "native NVMe multipath is off (nvme_core.multipath=N)" || { bad "nvme_core.multipath is not N"; finish; }

# --- the target: one subsystem, one file-backed namespace with reservations, a loop port.
cfg=/sys/kernel/config/nvmet
[ -d $cfg ] || { bad "no nvmet configfs (module not loaded?)"; finish; }
sub=nqn.2026-12.org.pr-helper:lab-resv
img=/run/lab/nvme-resv.img
truncate -s 16M $img
host_nqn=(x nqn.2026-12.org.pr-helper:host-a nqn.2026-12.org.pr-helper:host-b)
host_id=(x 6b1f3c2e-0000-4000-8000-00000000000a 6b1f3c2e-0000-4000-8000-00000000000b)
setup_target() {
  mkdir $cfg/subsystems/$sub || return 1
  echo 0 > $cfg/subsystems/$sub/attr_allow_any_host || return 1
  local h
  for h in 1 2; do
    mkdir $cfg/hosts/${host_nqn[$h]} && ln -s $cfg/hosts/${host_nqn[$h]} $cfg/subsystems/$sub/allowed_hosts/ || return 1
  done
  local ns=$cfg/subsystems/$sub/namespaces/1
  mkdir $ns || return 1
  echo $img > $ns/device_path || return 1
  echo 1 > $ns/buffered_io || return 1   # tmpfs has no O_DIRECT
  echo 1 > $ns/resv_enable || return 1
  echo 1 > $ns/enable || return 1
  mkdir $cfg/ports/1 && echo loop > $cfg/ports/1/addr_trtype || return 1
  ln -s $cfg/subsystems/$sub $cfg/ports/1/subsystems/ || return 1
}
setup_target 2>$log/setup.err && ok "nvmet subsystem with resv_enable=1 on a file-backed namespace, loop port" \
  || { bad "nvmet configuration failed: $(cat $log/setup.err)"; finish; }

# --- two hosts, one controller each.
dev=(x "" "")
find_dev() { # the block device of host $1's controller, when it exists
  local c
  for c in /sys/class/nvme/nvme*; do
    [ "$(cat $c/subsysnqn 2>/dev/null)" = $sub ] && [ "$(cat $c/hostnqn 2>/dev/null)" = "${host_nqn[$1]}" ] || continue
    [ -b /dev/$(basename $c)n1 ] && { dev[$1]=/dev/$(basename $c)n1; return 0; }
  done
  return 1
}
# Host A connects with nvme-cli. nvme-cli 2.3 (libnvme 1.3) then refuses host B's connect as
# "already connected" (same subsystem and port, whatever the host NQN, even with -D), so host
# B connects through the kernel's interface that nvme-cli writes to: one option string
# written to /dev/nvme-fabrics, answered with the new controller's instance.
nvme connect -t loop -n $sub --hostnqn=${host_nqn[1]} --hostid=${host_id[1]} >$log/connect1.out 2>&1 \
  || { bad "nvme connect for ${host_nqn[1]} failed: $(tail -2 $log/connect1.out)"; finish; }
wait_for 20 "the namespace of ${host_nqn[1]} appearing" find_dev 1 || finish
fabrics_connect() {
  exec 3<>/dev/nvme-fabrics || return 1
  printf 'transport=loop,nqn=%s,hostnqn=%s,hostid=%s' $sub ${host_nqn[2]} ${host_id[2]} >&3 || { exec 3>&-; return 1; }
  read -r line <&3; exec 3>&-
  echo "$line"
}
fabrics_connect >$log/connect2.out 2>&1 || { bad "connecting ${host_nqn[2]} through /dev/nvme-fabrics failed: $(cat $log/connect2.out)"; finish; }
wait_for 20 "the namespace of ${host_nqn[2]} appearing" find_dev 2 || finish
A=${dev[1]}; B=${dev[2]}
[ "$A" != "$B" ] && ok "host A has $A, host B has $B (separate controllers)" || { bad "one device for both hosts: $A"; finish; }

# --- our daemon.
sock=/run/lab/nvme-resv.sock
# Every command bounded (pr-ctl's own default is 120 s): a hung one is a failed step.
C="$BIN/pr-ctl --socket $sock --timeout 20"
printf '[[device]]\npath = "%s"\nbackend = "blkpr"\n[[device]]\npath = "%s"\nbackend = "blkpr"\n' $A $B > $log/config.toml
"$BIN/pr-helper" -k $sock -u nobody -g nogroup -vv --config $log/config.toml 2>$log/daemon.log &
helper=$!
daemon_up() { [ -S $sock ] && $C capabilities $A >/dev/null 2>&1; }
wait_for 20 "the daemon answering on $sock" daemon_up || finish
expect "configured for blkpr the daemon keeps CAP_SYS_RAWIO + CAP_SYS_ADMIN" 0000000000220000 \
  "$(awk '/^CapEff/{print $2}' /proc/$helper/status)"

# --- the two ways of sending a command. Both print "good", "conflict" or what else came back.
# Types are NVMe reservation types 1-6 (WE, EA, WE-RO, EA-RO, WE-AR, EA-AR), the same values
# as Linux's enum pr_type; pr-ctl takes the SCSI names.
scsi_type=(x we ea we-ro ea-ro we-ar ea-ar)
# Under TCG every process costs (9p root, no KVM): the JSON is matched in bash, not with jq.
classify() { # pr-ctl's JSON answer -> good | conflict | check K/A/Q | status N
  local j=$1
  if [[ $j == *'"status":"GOOD"'* ]]; then echo good
  elif [[ $j == *'"status_code":24'* ]]; then echo conflict
  elif [[ $j =~ \"asc\":([0-9]+),\"ascq\":([0-9]+),.*\"key\":([0-9]+), ]]; then
    echo "check ${BASH_REMATCH[3]}/${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
  elif [[ $j =~ \"status_code\":([0-9]+) ]]; then echo "status ${BASH_REMATCH[1]}"
  else echo no-answer; fi
}
ours() { # ours DEV OP ARGS...: through our daemon
  local d=$1 op=$2 out; shift 2
  case $op in
    register) out=$($C --json register $d -k $1 -n $2 --aptpl ${3:+--ignore-existing} 2>>$log/ctl.err);;
    reserve) out=$($C --json reserve $d -k $1 -t ${scsi_type[$2]} 2>>$log/ctl.err);;
    release) out=$($C --json release $d -k $1 -t ${scsi_type[$2]} 2>>$log/ctl.err);;
    preempt) out=$($C --json preempt $d -k $1 -v $2 -t ${scsi_type[$3]} 2>>$log/ctl.err);;
    preempt-abort) out=$($C --json preempt-abort $d -k $1 -v $2 -t ${scsi_type[$3]} 2>>$log/ctl.err);;
    clear) out=$($C --json clear $d -k $1 2>>$log/ctl.err);;
  esac
  echo "$op $*: $out" >> $log/ctl.out
  classify "$out"
}
cli() { # cli DEV OP ARGS...: nvme-cli's Reservation commands straight on the device
  local d=$1 op=$2 out; shift 2
  case $op in
    # The kernel registers with CPTPL=11b (NVME_PR_CPTPL_PERSIST, nvme_pr_register); the same
    # here. Key 0 removes the registration (Unregister), as REGISTER with a new key of 0 means in SPC.
    register)
      if [ $1 = 0 ]; then out=$(nvme resv-register $d -n 1 -r 0 -k $2 -p 3 ${3:+-i} 2>&1)
      elif [ $2 = 0 ]; then out=$(nvme resv-register $d -n 1 -r 1 -c $1 ${3:+-i} 2>&1)
      else out=$(nvme resv-register $d -n 1 -r 2 -c $1 -k $2 -p 3 ${3:+-i} 2>&1); fi;;
    reserve) out=$(nvme resv-acquire $d -n 1 -c $1 -t $2 -a 0 2>&1);;
    release) out=$(nvme resv-release $d -n 1 -c $1 -t $2 -a 0 2>&1);;
    preempt) out=$(nvme resv-acquire $d -n 1 -c $1 -p $2 -t $3 -a 1 2>&1);;
    preempt-abort) out=$(nvme resv-acquire $d -n 1 -c $1 -p $2 -t $3 -a 2 2>&1);;
    clear) out=$(nvme resv-release $d -n 1 -c $1 -a 1 2>&1);;
  esac
  echo "$op $*: $out" >> $log/cli.out
  case "$out" in
    *success*) echo good;;
    *RESERVATION_CONFLICT*|*"Reservation Conflict"*|*"RESERVATION CONFLICT"*) echo conflict;;
    *) echo "nvme: ${out%%$'\n'*}";;
  esac
}
# The namespace's state as a host reads it with nvme-cli: "rtype=N" then, per host in host
# order, "a=KEY" ("*" marks the holder); generation left out (it differs between runs).
report() { # report DEV
  local j
  j=$(nvme resv-report $1 -n 1 -e -o json 2>>$log/report.err)
  echo "$j" >> $log/report.out
  echo "$j" | jq -r --arg a ${host_id[1]//-/} --arg b ${host_id[2]//-/} '
    def who: (.hostid | tostring | ascii_downcase | gsub("[^0-9a-f]"; "")) as $h
      | if ($h | endswith($a)) or $h == $a then "a" elif ($h | endswith($b)) or $h == $b then "b" else $h end;
    "rtype=\(.rtype) " + ([(.regctlext // .regctl_eds // .regctls // [])[]
      | "\(who)=\(.rkey)\(if ((.rcsts // 0) % 2) == 1 then "*" else "" end)"] | sort | join(" "))' 2>>$log/report.err \
    || echo "no-report"
}
# The same state as our daemon reads it on a device (READ KEYS + READ RESERVATION through
# IOC_PR_READ_KEYS / IOC_PR_READ_RESERVATION): "keys=K,K res=SCSI-TYPE/KEY" or "res=none".
seen() { # seen DEV
  local k r ks
  k=$($C --json keys $1 2>>$log/ctl.err)
  r=$($C --json reservation $1 2>>$log/ctl.err)
  if [[ $k =~ \"keys\":\[([^]]*)\] ]]; then ks=${BASH_REMATCH[1]//\"/}; else ks=failed; fi
  ks=$(sortlist ${ks//,/ })
  if [[ $r == *'"reservation":null'* ]]; then r=none
  elif [[ $r =~ \"key\":\"([^\"]*)\".*\"type_code\":([0-9]+) ]]; then r=${BASH_REMATCH[2]}/${BASH_REMATCH[1]}
  else r=failed; fi
  echo "keys=$ks res=$r"
}
sortlist() { # sorts a few words, comma-joined, without a process
  local a=("$@") i j t
  for ((i = 0; i < ${#a[@]}; i++)); do for ((j = i + 1; j < ${#a[@]}; j++)); do
    [[ ${a[j]} < ${a[i]} ]] && { t=${a[i]}; a[i]=${a[j]}; a[j]=$t; }
  done; done
  local IFS=,; echo "${a[*]}"
}
# --- the sequence: "HOST OP ARGS => EXPECTED". Host a is the actor under test (ours or
# nvme-cli), host b is the other initiator. Keys: a=0xa1, b=0xb2.
steps=(
  "a register 0 0xa1 => good"
  "b register 0 0xb2 => good"
  "a reserve 0xa1 1 => good"
  "b reserve 0xb2 1 => conflict"
  "a release 0xa1 1 => good"
  "a reserve 0xa1 2 => good"
  "a release 0xa1 2 => good"
  "a reserve 0xa1 3 => good"
  "a release 0xa1 3 => good"
  "a reserve 0xa1 4 => good"
  "a release 0xa1 4 => good"
  "a reserve 0xa1 5 => good"
  "a release 0xa1 5 => good"
  "a reserve 0xa1 6 => good"
  "a release 0xa1 6 => good"
  "a register 0xa1 0xa3 => good"
  "a reserve 0xa1 1 => conflict"
  "b reserve 0xb2 3 => good"
  "a preempt 0xa3 0xb2 1 => good"
  "b register 0 0xb2 => good"
  "b reserve 0xb2 1 => conflict"
  "a release 0xa3 1 => good"
  "b reserve 0xb2 1 => good"
  "a preempt-abort 0xa3 0xb2 4 => good"
  "b register 0 0xb2 => good"
  "a register 0xa3 0xa1 => good"
  "a clear 0xa1 => good"
)
run_sequence() { # run_sequence ours|cli: prints one "step | result | report" line per step
  local via=$1 s host op args want got d
  for s in "${steps[@]}"; do
    want=${s##*=> }; set -- ${s%% =>*}; host=$1; op=$2; shift 2
    [ $host = a ] && d=$A || d=$B
    if [ $host = a ]; then got=$($via $d $op "$@"); else got=$(cli $d $op "$@"); fi
    echo "$s | $got | $(report $B)"
  done
}
# Host B sees each change: after every step of the daemon's run, READ KEYS and READ
# RESERVATION through our daemon on B's device must agree with nvme-cli's report on B.
check_seen() { # the report line and the seen line agree
  local rep=$1 s=$2 w keys=() rt h
  for w in $rep; do
    case $w in rtype=*) rt=${w#rtype=};; [ab]=*) w=${w#?=}; w=${w%\*}; printf -v h '0x%x' $w; keys+=($h);; esac
  done
  [ "${s%% res=*}" = "keys=$(sortlist "${keys[@]}")" ] || return 1
  if [ "$rt" = 0 ]; then [ "${s#* res=}" = none ]; else [ "${s#* res=}" != none ] && [ "${s#* res=}" != failed ]; fi
}
ours_run=$log/seq-ours; : > $ours_run
i=0; seen_bad=0
for s in "${steps[@]}"; do
  i=$((i+1))
  want=${s##*=> }; set -- ${s%% =>*}; host=$1; op=$2; shift 2
  if [ $host = a ]; then got=$(ours $A $op "$@"); else got=$(cli $B $op "$@"); fi
  rep=$(report $B); sb=$(seen $B)
  echo "$s | $got | $rep" >> $ours_run
  echo "$i: $s | $got | $rep | $sb" >> $log/seen
  [ "$got" = "$want" ] || bad "daemon step $i ($s): got $got"
  check_seen "$rep" "$sb" || { seen_bad=$((seen_bad+1)); bad "step $i ($s): host B through the daemon sees '$sb', nvme-cli reports '$rep'"; }
done
[ $seen_bad = 0 ] && ok "host B's READ KEYS / READ RESERVATION through IOC_PR_READ_* agree with nvme resv-report after each of ${#steps[@]} steps"
grep -q 'IOC_PR_READ_KEYS\|ReadKeys' $log/daemon.log && ! grep -q 'IOC_PR_READ_KEYS: .*refused\|has no SG_IO' $log/daemon.log \
  && ok "READ KEYS went through IOC_PR_READ_KEYS (no fallback, no refusal)" \
  || bad "READ KEYS did not go through IOC_PR_READ_KEYS: $(grep -i 'read_keys\|readkeys\|refused' $log/daemon.log | tail -2)"
# Type and holder through IOC_PR_READ_RESERVATION, checked at chosen steps.
expect "READ RESERVATION after host A reserves EA-RO: type and holder" "keys=0xa1,0xb2 res=6/0xa1" \
  "$(sed -n 's/^10: .* | \(keys=.*\)$/\1/p' $log/seen)"
expect "READ RESERVATION after host A reserves EA-AR (all registrants: key 0, as SPC-4 says)" "keys=0xa1,0xb2 res=8/0x0" \
  "$(sed -n 's/^14: .* | \(keys=.*\)$/\1/p' $log/seen)"
expect "after PREEMPT AND ABORT host B reads host A's EA-RO reservation and only host A's key" "keys=0xa3 res=6/0xa3" \
  "$(sed -n 's/^24: .* | \(keys=.*\)$/\1/p' $log/seen)"
expect "after CLEAR host B reads no key and no reservation" "keys= res=none" \
  "$(sed -n "s/^${#steps[@]}: .* | \(keys=.*\)\$/\1/p" $log/seen)"

phase "the daemon's sequence"
# --- parity: the same sequence through nvme-cli alone, on a cleared namespace.
cli_run=$log/seq-cli
run_sequence cli > $cli_run
if diff $ours_run $cli_run > $log/parity.diff; then
  ok "parity: ${#steps[@]} steps through our daemon and through nvme-cli give the same results and states"
else
  bad "parity: our daemon and nvme-cli differ (< ours, > nvme-cli):"; sed 's/^/  | /' $log/parity.diff | head -60
fi
[ "$(report $B)" = "rtype=0 " ] || nvme resv-release $A -n 1 -c 0xa1 -a 1 >/dev/null 2>&1
phase "nvme-cli's sequence"

# --- what IOC_PR_REGISTER does on NVMe where SCSI's REGISTER means something else. The kernel
# (nvme_pr_register) sends Reservation Register with action Register when the old key is 0 and
# Replace otherwise, never Unregister: a new key of 0 would replace the key by 0, and the host
# would stay registered (holding its reservation). So the daemon refuses unregistering on an
# NVMe namespace (ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST at the service action
# reservation key, docs/backends.md), and the namespace keeps the key. With PR_FL_IGNORE_KEY
# and old key 0 the kernel sends Register with IEKEY, which conflicts when the host is
# registered with another key (SCSI's REGISTER AND IGNORE EXISTING KEY replaces it): checked as
# the kernel's behaviour, not ours.
expect "register 0xa1, reserve WE" "good good" "$(ours $A register 0 0xa1) $(ours $A reserve 0xa1 1)"
expect "unregistering (new key 0) is refused on NVMe, and host A keeps its key and reservation" \
  "check 5/38/0 rtype=1 a=161*" "$(ours $A register 0xa1 0) $(report $B)"
expect "REGISTER AND IGNORE EXISTING KEY of a registered host: RESERVATION CONFLICT on NVMe" \
  "conflict rtype=1 a=161*" "$(ours $A register 0 0xa5 ignore) $(report $B)"
expect "REGISTER AND MOVE is refused on NVMe: ILLEGAL REQUEST, INVALID FIELD IN CDB" "5/36/0 rtype=1 a=161*" \
  "$($C --json register-move $A -k 0xa1 -n 0xb2 -t we --transport-id iqn.2026-12.org.pr-helper:nobody \
      --relative-target-port 1 2>/dev/null | jq -r '"\(.sense.key)/\(.sense.asc)/\(.sense.ascq)"') $(report $B)"
expect "host A's registration and reservation removed by CLEAR through the daemon" \
  "good rtype=0 " "$(ours $A clear 0xa1) $(report $B)"
phase "register semantics"

# --- fence_scsi on NVMe: both nodes register (REGISTER AND IGNORE EXISTING KEY), node A
# reserves WE-RO, fences node B with PREEMPT AND ABORT, node B's writes fail; unfencing B.
wr() { timeout 20 dd if=/dev/zero of=$1 bs=4096 count=1 seek=${2:-8} oflag=direct conv=notrunc status=none 2>>$log/dd.err; }
rd() { timeout 20 dd if=$1 of=/dev/null bs=4096 count=1 iflag=direct status=none 2>>$log/dd.err; }
expect "fence: node A registers (ignore existing key)" good "$(ours $A register 0 0xf1 ignore)"
expect "fence: node B registers through the daemon too" good "$(ours $B register 0 0xf2 ignore)"
expect "fence: node A reserves WE-RO" good "$(ours $A reserve 0xf1 3)"
wr $B && ok "fence: registered node B writes under WE-RO" || bad "fence: node B cannot write while registered"
expect "fence: node A fences node B (PREEMPT AND ABORT)" good "$(ours $A preempt-abort 0xf1 0xf2 3)"
expect "fence: node B's key is gone, the reservation is node A's" "rtype=3 a=241*" "$(report $B)"
wr $B && bad "fence: fenced node B could still write" || ok "fence: fenced node B's write fails ($(tail -1 $log/dd.err))"
rd $B && ok "fence: fenced node B still reads (WE-RO)" || bad "fence: fenced node B cannot read"
wr $A && ok "fence: node A still writes" || bad "fence: node A cannot write"
expect "fence: unfencing node B (register, ignore existing key)" good "$(ours $B register 0 0xf2 ignore)"
wr $B && ok "fence: unfenced node B writes again" || bad "fence: unfenced node B still cannot write"
expect "fence: CLEAR" good "$(ours $A clear 0xf1)"

phase "fencing"
# --- what the ioctls cannot express, on NVMe (docs/backends.md).
sense() { $C --json "$@" 2>/dev/null | jq -r '"\(.sense.key)/\(.sense.asc)/\(.sense.ascq)"' 2>/dev/null; }
caps_json=$($C --json capabilities $A 2>>$log/ctl.err)
echo "$caps_json" > $log/capabilities.json
[ -n "$caps_json" ] && ok "REPORT CAPABILITIES is answered (synthesised): $(echo "$caps_json" | jq -c '{ptpl_c, atp_c, sip_c, types}' 2>/dev/null)" \
  || bad "REPORT CAPABILITIES failed"
expect "READ FULL STATUS is refused on NVMe (no ioctl, no SG_IO): ILLEGAL REQUEST, INVALID FIELD IN CDB" 5/36/0 "$(sense status $A)"
expect "REGISTER without APTPL is refused (IOC_PR_REGISTER cannot clear it)" 5/38/0 \
  "$($C --json register $A -n 0x1 2>/dev/null | jq -r '"\(.sense.key)/\(.sense.asc)/\(.sense.ascq)"')"
cp $log/daemon.log $log/daemon.log.keep
kill $helper; wait $helper 2>/dev/null
for h in 1 2; do nvme disconnect -n $sub >/dev/null 2>&1; break; done
finish
