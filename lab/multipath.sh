#!/bin/bash
# The multipath scenario (runs in the lab guest after everything else): a dm-multipath map of
# two LIO paths to one logical unit, grouped by multipathd with `reservation_key file`, used
# through our daemon as node 1 of a fence_mpath-style cluster; node 2 is a third initiator on
# the same LU, outside the map. A path fails and comes back in the middle: multipathd must
# register the current key on the reinstated path. One PASS/FAIL line per check.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
. "$TOP/lab/lio.sh"
ok() { echo "PASS multipath: $*"; }
bad() { echo "FAIL multipath: $*"; failed=1; }
failed=0
# systemd-udevd and udevadm refuse to act in a chroot unless told to.
export SYSTEMD_IGNORE_CHROOT=1
log=/run/lab/multipath
mkdir -p $log

for m in $(cat /run/lab-modules/list); do insmod /run/lab-modules/$m; done
[ -c /dev/mapper/control ] || { bad "device-mapper did not come up"; exit 0; }

# One LU: node 2's initiator (port ...c3) and node 1's two paths (ports ...c1 and ...c2).
lu=mpathlu
lio_lu $lu
n2=$(lio_disk $lu naa.50014050000d0003 naa.5001405000000c03)
p1=$(lio_disk $lu naa.50014050000d0001 naa.5001405000000c01)
p2=$(lio_disk $lu naa.50014050000d0002 naa.5001405000000c02)
echo "multipath: node 2 $n2, node 1 paths $p1 $p2"

# multipathd's configuration and state files on a tmpfs (the guest's root is read-only).
mount -t tmpfs tmpfs /etc/multipath
mkdir -p /etc/multipath/conf.d
cat > /etc/multipath/conf.d/lab.conf <<CONF
defaults {
    reservation_key file
    find_multipaths no
    user_friendly_names no
    polling_interval 1
    max_polling_interval 2
    no_path_retry fail
    # LIO's disks under tcm_loop get no VPD pages cached in sysfs, so udev sets no ID_SERIAL;
    # take the WWID from the device (SG_IO) at once instead of waiting for udev retriggers.
    retrigger_tries 0
    detect_prio no
}
devices {
    # Both paths active, no ALUA handler (LIO over tcm_loop has a single port group).
    device {
        vendor "LIO-ORG"
        product ".*"
        hardware_handler "0"
        path_grouping_policy multibus
        prio const
        path_checker tur
        no_path_retry fail
    }
}
# Only node 1's two paths: node 2's disk and the disks earlier scenarios left behind stay out
# (LIO's fileio LUs all report the same WWID here, so multipathd would group them all).
blacklist {
    devnode ".*"
}
blacklist_exceptions {
    devnode "^(${p1#/dev/}|${p2#/dev/})\$"
}
CONF
/lib/systemd/systemd-udevd --daemon --debug >$log/udevd.log 2>&1
udevadm trigger --action=add --subsystem-match=block >$log/trigger.log 2>&1
udevadm settle --timeout=30 >>$log/trigger.log 2>&1
multipathd -d -s -v3 >$log/multipathd.log 2>&1 &
mpd=$!
map=
for i in $(seq 60); do
  map=$(multipathd show maps raw format "%n" 2>/dev/null | head -1)
  [ -n "$map" ] && [ -b "/dev/mapper/$map" ] && [ "$(multipathd show paths raw format "%d %t" 2>/dev/null | grep -c active)" = 2 ] && break
  map=; sleep 0.5
done
if [ -z "$map" ]; then
  bad "multipathd did not build a map of two active paths"
  multipathd show paths 2>&1 | sed 's/^/  | /'
  grep -vE "operator|sysfs|pg8|cyl|: (size|vendor|product|rev|h:b:t:l|tgt_node_name|uid_attribute|recheck_wwid|vpd_vendor_id|serial) " \
    $log/multipathd.log | tail -40 | sed 's/^/  | /'
  exit 0
fi
ok "multipathd grouped $p1 and $p2 into /dev/mapper/$map"
dev=/dev/mapper/$map
echo "multipath: $(multipathd show paths raw format '%d %t %T' | tr '\n' ';')"

# Our daemon serves node 1. It keeps uid 0 (with only CAP_SYS_RAWIO and CAP_SYS_ADMIN):
# libmpathpersist opens the path devices itself, and multipathd takes key updates only from
# root.
sock=/run/lab/mpath.sock
"$BIN/pr-helper" -k $sock -u root -g root -v 2>$log/helper.log &
helper=$!
C="$BIN/pr-ctl --socket $sock"
for i in $(seq 50); do $C keys "$dev" >/dev/null 2>&1 && break; sleep 0.2; done
grep -q "multipath support: active" $log/helper.log \
  && ok "our daemon turned multipath support on" \
  || bad "multipath support is not active: $(grep -i multipath $log/helper.log)"
st=/proc/$helper/status
caps=$(awk '/^CapEff/{print $2}' $st)
[ "$caps" = 0000000000220000 ] && ok "daemon keeps only CAP_SYS_RAWIO and CAP_SYS_ADMIN" \
  || bad "daemon's CapEff is $caps, expected 0000000000220000"
mt=$(grep -l '^pr-mpath' /proc/$helper/task/*/comm | head -1)
if [ -n "$mt" ] && [ "$(awk '/^Seccomp:/{print $2}' "$(dirname "$mt")/status")" = 2 ]; then
  ok "the libmpathpersist thread runs under its own seccomp filter"
else
  bad "no pr-mpath thread under seccomp"
fi

# Registrations as the device sees them: "KEY SAS-ADDRESS" per I_T nexus, from node 2's path
# (retried: the first command after node 2 is preempted meets its unit attention).
regs() {
  local out t
  for t in 1 2 3; do out=$(sg_persist -n -s "$n2" 2>/dev/null) && break; done
  echo "$out" | awk '/Key=/{k=substr($1,5)} /SAS address:/{print k, $3}' | sort | tr '\n' ' '
}
c1=0x5001405000000c01 c2=0x5001405000000c02 c3=0x5001405000000c03
expect() { # expect WHAT WANT GOT
  [ "$2" = "$3" ] && ok "$1" || bad "$1: expected '$2', got '$3'"
}
run() { # run WHAT EXPECTED-EXIT command...
  local what=$1 want=$2; shift 2
  local out; out=$("$@" 2>&1); local rc=$?
  [ $rc = "$want" ] && ok "$what" || bad "$what: exit $rc (expected $want): $out"
}

# fence_mpath: each node registers its key (node 1 through the map: on every path), node 1
# reserves WRITE EXCLUSIVE - REGISTRANTS ONLY.
run "node 1 registers 0x1 through the map" 0 $C register "$dev" -n 0x1
expect "the key is registered on both of node 1's paths" "0x1 $c1 0x1 $c2 " "$(regs)"
run "node 2 registers 0x2 on its own path" 0 sg_persist -n --out --register --param-sark=0x2 "$n2"
run "node 1 reserves WE-RO through the map" 0 $C reserve "$dev" -k 0x1 -t we-ro
expect "READ KEYS through the library" '"keys":["0x1","0x1","0x2"]' \
  "$($C --json keys "$dev" | grep -o '"keys":\[[^]]*\]')"
expect "READ RESERVATION through the library" '"key":"0x1","scope":"lu","type":"write-exclusive-registrants-only"' \
  "$($C --json reservation "$dev" | grep -o '"key":"[^"]*","scope":"[^"]*","type":"[^"]*"')"
run "REPORT CAPABILITIES through the library" 0 $C capabilities "$dev"
full=$($C --json status "$dev")
case "$full" in *5001405000000c01*5001405000000c02*|*5001405000000c02*5001405000000c01*)
  ok "READ FULL STATUS through one active path lists both of node 1's nexuses";;
  *) bad "READ FULL STATUS: $full";;
esac
out=$($C register-move "$dev" -k 0x1 -n 0x3 -t we-ro --transport-id naa.5001405000000c03 --relative-target-port 1 2>&1)
[ $? = 4 ] && ok "REGISTER AND MOVE is refused (CHECK CONDITION)" || bad "REGISTER AND MOVE: $out"

# A path fails; node 1 changes its key meanwhile (reaching only the live path); the path
# comes back and multipathd registers the current key on it.
echo offline > "/sys/block/${p2#/dev/}/device/state"
for i in $(seq 40); do
  multipathd show paths raw format "%d %t" 2>/dev/null | grep -q "^${p2#/dev/} failed" && break
  sleep 0.5
done
multipathd show paths raw format "%d %t" 2>/dev/null | grep -q "^${p2#/dev/} failed" \
  && ok "multipathd marked ${p2#/dev/} failed" || bad "path ${p2#/dev/} not failed: $(multipathd show paths raw format '%d %t %T' | tr '\n' ';')"
run "node 1 changes its key to 0x11 with a path down" 0 $C register "$dev" -k 0x1 -n 0x11
expect "only the live path has the new key" "0x1 $c2 0x11 $c1 0x2 $c3 " "$(regs)"
echo running > "/sys/block/${p2#/dev/}/device/state"
for i in $(seq 60); do
  [ "$(regs)" = "0x11 $c1 0x11 $c2 0x2 $c3 " ] && break
  sleep 0.5
done
expect "multipathd registered 0x11 on the reinstated path" "0x11 $c1 0x11 $c2 0x2 $c3 " "$(regs)"

# Fencing node 2 (PREEMPT: PREEMPT AND ABORT deadlocks LIO over tcm_loop, lab/README.md).
run "node 1 preempts node 2's key" 0 $C preempt "$dev" -k 0x11 -v 0x2 -t we-ro
expect "node 2's registration is gone" "0x11 $c1 0x11 $c2 " "$(regs)"
dd if=/dev/zero of="$n2" bs=512 count=1 oflag=direct status=none 2>/dev/null \
  && bad "fenced node 2 could still write" || ok "fenced node 2 cannot write"
dd if=/dev/zero of="$dev" bs=512 count=1 oflag=direct status=none 2>/dev/null \
  && ok "node 1 writes through the map" || bad "node 1 cannot write through the map"
# Unfencing: node 2 registers again and may write.
run "node 2 unfences (REGISTER AND IGNORE EXISTING KEY)" 0 sg_persist -n --out --register-ignore --param-sark=0x2 "$n2"
dd if=/dev/zero of="$n2" bs=512 count=1 oflag=direct status=none 2>/dev/null \
  && ok "unfenced node 2 writes again" || bad "unfenced node 2 still cannot write"
run "node 1 clears everything through the map" 0 $C clear "$dev" -k 0x11
expect "no registrations remain" "" "$(regs)"

kill $helper 2>/dev/null; wait $helper 2>/dev/null
kill $mpd 2>/dev/null
if [ $failed != 0 ]; then
  dmesg | grep -E "audit|syscall=" | tail -5 | sed 's/^/  | dmesg: /'
  tail -20 $log/helper.log | sed 's/^/  | helper: /'
  grep -vE "operator|sysfs|pg8|cyl|: (size|vendor|product|rev|h:b:t:l|tgt_node_name|uid_attribute|recheck_wwid|vpd_vendor_id|serial) " \
    $log/multipathd.log | tail -25 | sed 's/^/  | multipathd: /'
fi
