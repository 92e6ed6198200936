#!/bin/bash
# NVMe in the lab guest (QEMU's emulated controller, /dev/nvme0n1): our daemon picks the
# block-layer backend for an NVMe namespace by itself, and keeps CAP_SYS_ADMIN only when the
# configuration names the device. QEMU 7.2's controller implements no reservations, so what is
# checked is where each command goes and what comes back; reservations through IOC_PR_* on a
# real device run in blkpr-parity.scn. One PASS/FAIL line per check.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
ok() { echo "PASS nvme: $*"; }
bad() { echo "FAIL nvme: $*"; }
log=/run/lab/nvme
mkdir -p $log
nv=/dev/nvme0n1
[ -b $nv ] || { bad "no NVMe namespace in the guest"; exit 0; }
sock=/run/lab/nvme.sock
C="$BIN/pr-ctl --socket $sock"
helper=
start() { # start LOG [pr-helper options]
  local l=$1; shift
  [ -n "$helper" ] && { kill $helper; wait $helper 2>/dev/null; }
  "$BIN/pr-helper" -k $sock -u nobody -g nogroup -vv "$@" 2>$log/$l &
  helper=$!
  for i in $(seq 50); do [ -S $sock ] && $C capabilities $nv >/dev/null 2>&1 && break; sleep 0.2; done
}
# The decoded sense of a failed command: "KEY/ASC/ASCQ" in hex.
sense() {
  $C --json "$@" 2>/dev/null | sed -n 's/.*"asc":\([0-9]*\),"ascq":\([0-9]*\),.*"key":\([0-9]*\),.*/\3 \1 \2/p' \
    | { read -r k a q && printf '%02x/%02x/%02x' "$k" "$a" "$q"; }
}
expect() { [ "$2" = "$3" ] && ok "$1" || bad "$1: expected '$2', got '$3'"; }
caps() { awk '/^CapEff/{print $2}' /proc/$helper/status; }

start auto.log
expect "without configuration the daemon keeps only CAP_SYS_RAWIO" 0000000000020000 "$(caps)"
# READ KEYS through the block layer: no IOC_PR_READ_KEYS before Linux 6.19 and no SG_IO on
# NVMe, so INVALID FIELD IN CDB (SG_IO passthrough would answer ABORTED COMMAND).
expect "READ KEYS on the namespace goes to the block-layer backend" 05/24/00 "$(sense keys $nv)"
grep -q "has no SG_IO: refused" $log/auto.log && ok "the daemon says why READ KEYS was refused" \
  || bad "no refusal reason in the log: $(grep -i blkpr $log/auto.log | tail -3)"
# PR OUT: Linux 6.1 allows IOC_PR_* only with CAP_SYS_ADMIN, which an unconfigured daemon
# does not keep: LOGICAL UNIT COMMUNICATION FAILURE, and the log says what to do.
expect "REGISTER without CAP_SYS_ADMIN fails" 0b/08/00 "$(sense register $nv -n 0x1 --aptpl)"
grep -q 'backend = \\"blkpr\\"\|backend = "blkpr"' $log/auto.log && ok "the log names the configuration that keeps CAP_SYS_ADMIN" \
  || bad "the log does not explain the missing privilege: $(grep -i IOC_PR $log/auto.log | tail -2)"

printf '[[device]]\npath = "%s"\nbackend = "blkpr"\n' $nv > $log/config.toml
start configured.log --config $log/config.toml
expect "configured for blkpr the daemon keeps CAP_SYS_ADMIN too" 0000000000220000 "$(caps)"
# Now IOC_PR_REGISTER reaches the nvme driver, which sends Reservation Register; QEMU's
# controller rejects it with an NVMe status, answered as ABORTED COMMAND, I/O PROCESS TERMINATED.
expect "REGISTER reaches the NVMe driver" 0b/00/06 "$(sense register $nv -n 0x1 --aptpl)"
grep -q "blkpr: Register" $log/configured.log && ok "the daemon ran IOC_PR_REGISTER" \
  || bad "no IOC_PR_REGISTER in the log"
kill $helper; wait $helper 2>/dev/null
