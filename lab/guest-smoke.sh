#!/bin/bash
# Runs inside the lab guest (chroot on the host's root, read-only): two LIO loopback
# initiators on one fileio logical unit, our daemon, and a first scenario.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
HELPER=$TOP/target/release/pr-helper
CTL=$TOP/target/release/pr-ctl
cfg=/sys/kernel/config/target
pass=0; fail=0
ok() { echo "PASS $1"; pass=$((pass+1)); }
ko() { echo "FAIL $1: $2"; fail=$((fail+1)); }

mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config || echo "lab: cannot mount configfs"
truncate -s 64M /run/disk0.img
mkdir -p $cfg/core/fileio_0/disk0
echo "fd_dev_name=/run/disk0.img,fd_dev_size=67108864" > $cfg/core/fileio_0/disk0/control
echo 1 > $cfg/core/fileio_0/disk0/enable
for i in 1 2; do
  t=$cfg/loopback/naa.50014050000000a$i/tpgt_1
  mkdir -p $t/lun/lun_0
  echo naa.50014050000000b$i > $t/nexus
  ln -s $cfg/core/fileio_0/disk0 $t/lun/lun_0/disk0
done
for i in $(seq 50); do [ -b /dev/sdb ] && break; sleep 0.1; done
[ -b /dev/sda ] && [ -b /dev/sdb ] || { echo "FAIL lio: no /dev/sda and /dev/sdb"; echo "LAB-RESULT 0 1"; exit 1; }
echo "lab: LIO up: $(ls /dev/sd*)"

$HELPER -k /run/pr.sock -u nobody -g nogroup &
hp=$!
for i in $(seq 50); do [ -S /run/pr.sock ] && break; sleep 0.1; done

# raw CDB through the helper; prints status and data hex
via() { timeout 60 $CTL --socket /run/pr.sock raw --device "$1" --cdb "$2" ${3:+--data "$3"}; }
status_of() { sed -n 's/.*"status":\([0-9]*\).*/\1/p'; }
data_of() { sed -n 's/.*"data":"\([0-9a-f]*\)".*/\1/p'; }
key() { printf '%016x' "$1"; }
params() { echo "$(key $1)$(key $2)0000000000000000"; }

r=$(via /dev/sda 5f000000000000001800 "$(params 0 0x1111)"); [ "$(echo "$r" | status_of)" = 0 ] && ok "register A via helper" || ko "register A via helper" "$r"
r=$(via /dev/sdb 5f000000000000001800 "$(params 0 0x2222)"); [ "$(echo "$r" | status_of)" = 0 ] && ok "register B via helper" || ko "register B via helper" "$r"
# READ KEYS through the helper equals READ KEYS straight on the device.
d=$(via /dev/sda 5e000000000000010000 | data_of)
raw=$(sg_raw -r 256 -b /dev/sdb 5e 00 00 00 00 00 00 01 00 00 2>/dev/null | od -An -tx1 -v | tr -d ' \n')
if [ -n "$d" ] && [ "$d" = "$raw" ]; then ok "read keys parity"; else ko "read keys parity" "helper=$d direct=$raw"; fi
echo "$d" | grep -q "0000000000001111" && echo "$d" | grep -q "0000000000002222" && ok "both keys registered" || ko "both keys registered" "$d"
r=$(via /dev/sda 5f010500000000001800 "$(params 0x1111 0)"); [ "$(echo "$r" | status_of)" = 0 ] && ok "reserve WE-RO by A" || ko "reserve WE-RO by A" "$r"
r=$(via /dev/sdb 5f010300000000001800 "$(params 0x2222 0)"); [ "$(echo "$r" | status_of)" = 24 ] && ok "reserve EA by B conflicts" || ko "reserve EA by B conflicts" "$r"
sg_persist -n -r /dev/sdb 2>&1 | grep -qi "Exclusive, registrants only" && ok "B sees A's reservation" || ko "B sees A's reservation" "$(sg_persist -n -r /dev/sdb 2>&1)"
# Fencing: B preempts A's key and takes the reservation; A's writes then conflict.
# (fence_scsi uses PREEMPT AND ABORT; on the lab's 6.1 kernel that hangs LIO's workers with
# tcm_loop, so this scenario uses PREEMPT until that is understood.)
r=$(via /dev/sdb 5f040500000000001800 "$(params 0x2222 0x1111)"); [ "$(echo "$r" | status_of)" = 0 ] && ok "preempt A by B" || ko "preempt A by B" "$r"
d=$(via /dev/sdb 5e000000000000010000 | data_of)
echo "$d" | grep -q "0000000000001111" && ko "A's key removed" "$d" || ok "A's key removed"
if timeout 60 dd if=/dev/zero of=/dev/sda bs=512 count=1 oflag=direct 2>/dev/null; then ko "fenced A cannot write" "write succeeded"; else ok "fenced A cannot write"; fi
if timeout 60 dd if=/dev/zero of=/dev/sdb bs=512 count=1 oflag=direct 2>/dev/null; then ok "holder B can write"; else ko "holder B can write" "write failed"; fi
grep -q "^Uid:.*65534" /proc/$hp/status && grep -q "CapEff:.*0000000000020000" /proc/$hp/status && ok "helper runs as nobody with CAP_SYS_RAWIO" || ko "helper privileges" "$(grep -E 'Uid|CapEff' /proc/$hp/status)"
kill $hp
# Kernel messages from LIO and the SCSI layer explain most failures; print them when any.
[ $fail = 0 ] || dmesg | grep -iE "target|tcm|aptpl|sd |scsi" | tail -40 | sed 's/^/lab-dmesg: /'
echo "LAB-RESULT $pass $fail"
