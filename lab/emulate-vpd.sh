#!/bin/bash
# The emulate backend's LU identity from VPD page 0x83, against a LIO logical unit: the daemon
# started with default = "emulate" (and once more with the LU chosen by id = "naa.…") names the
# LU in the store by the NAA identifier the device reports, which is compared with what
# sg_vpd and sysfs say in the guest; a PR OUT through the daemon must land in the store under
# that identifier. One PASS/FAIL line per check.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
. "$TOP/lab/lio.sh"
modprobe -a target_core_mod target_core_file tcm_loop 2>/dev/null || true
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
ok() { echo "PASS emulate-vpd: $*"; }
bad() { echo "FAIL emulate-vpd: $*"; }
log=/run/lab/emulate-vpd
mkdir -p $log
chown nobody:nogroup $log
# A fileio LU as lio_lu makes it, with a unit serial: LIO reports the NAA designator in
# VPD page 0x83 only for an LU with one (target_core_spc.c).
truncate -s 8M /run/vpd0.img
mkdir -p "$cfg/core/fileio_0/vpd0"
echo "fd_dev_name=/run/vpd0.img,fd_dev_size=8388608" > "$cfg/core/fileio_0/vpd0/control"
echo "pr-lab-vpd0" > "$cfg/core/fileio_0/vpd0/wwn/vpd_unit_serial"
echo 1 > "$cfg/core/fileio_0/vpd0/enable"
# Target and initiator WWNs no other lab script uses (lio_disk would reuse an existing target).
tgt=naa.5001405e0d000a01
[ -e "$cfg/loopback/$tgt" ] && { bad "the loopback target $tgt exists already"; exit 0; }
d=$(lio_disk vpd0 $tgt naa.5001405e0d000b01) || { bad "the LIO disk did not appear"; exit 0; }
# The LU's NAA designator as sg3_utils decodes it ("0x6001405…"), and as the kernel shows it.
want=naa.$(sg_vpd -p di "$d" 2>/dev/null | awk '/Addressed logical unit/{f=1} f && /0x6001405/{print $1; exit}' | sed 's/^0x//')
sys=$(cat "/sys/block/$(basename "$d")/device/wwid" 2>/dev/null)
[ "$want" != naa. ] && ok "sg_vpd reports the LU's NAA designator $want" || bad "sg_vpd -p di $d: no NAA designator: $(sg_vpd -p di "$d" 2>&1 | head -20)"
[ "$sys" = "$want" ] && ok "sysfs wwid agrees ($sys)" || bad "sysfs wwid '$sys' differs from sg_vpd's '$want'"
sock=/run/lab/emulate-vpd.sock
run() { # run NAME CONFIG-TEXT: the daemon on its own store, a REGISTER through it, the store listed
  local name=$1 db=$log/$1.db
  printf '%s\n[emulate]\nstore = "%s"\n' "$2" "$db" > $log/$name.toml
  # The daemon (as nobody) cannot remove its socket from root's /run/lab at exit.
  rm -f $sock
  "$BIN/pr-helper" -k $sock --config $log/$name.toml -u nobody -g nogroup -v 2>$log/$name.log &
  local h=$!
  for i in $(seq 300); do [ -S $sock ] && break; kill -0 $h 2>/dev/null || break; sleep 0.1; done
  "$BIN/pr-ctl" --socket $sock register "$d" --new-key 0x1234 >$log/$name.ctl 2>&1 \
    && ok "$name: REGISTER through the emulate backend" || bad "$name: REGISTER failed: $(cat $log/$name.ctl) $(tail -5 $log/$name.log)"
  kill $h; wait $h 2>/dev/null
  local listed
  listed=$("$BIN/pr-ctl" store --store $db list 2>&1)
  [ "$(echo "$listed" | awk '{print $1}')" = "$want" ] \
    && ok "$name: pr-ctl store list shows the LU as $want" \
    || bad "$name: pr-ctl store list shows '$listed', expected $want"
  grep -q "logical unit $want (VPD page 0x83)" $log/$name.log \
    && ok "$name: the start-up log names the identifier's source" \
    || bad "$name: no 'logical unit $want (VPD page 0x83)' in the log: $(grep -i emulate $log/$name.log | head -5)"
}
run default 'default = "emulate"'
run by-id "[[device]]
id = \"$want\"
backend = \"emulate\""
# By path with a configured name: the VPD identifier still wins (the name is the fallback).
run by-path "[[device]]
path = \"$d\"
backend = \"emulate\"
lu = \"fallback-name\""
