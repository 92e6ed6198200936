# Shared pieces of the pr-target lab scripts, sourced (bash) on the host and in the guest.
# Used by lab/target-multihost.sh and lab/target-multihost-guest.sh.
#
# Host:  tc_init NAME           PASS/FAIL lines "PASS NAME: ..." and the counters pass/fail
#        ok TEXT / ko TEXT      one check
#        tc_start_target LOG CONFIG [PREFIX...]
#                               pr-target as nobody (no new privileges, its seccomp list) in
#                               the background, logging to LOG; sets tc_pid; waits (30 s) until
#                               it logs "ready". PREFIX: a command to run it under.
#        tc_boot LOG SOCKET SCRIPT APPEND  a TCG guest of the 6.1 lab kernel with shared
#                               memfd memory and one vhost-user-scsi-pci controller (PCI slot
#                               10h) on SOCKET, running SCRIPT; in the background, sets tc_pid
#        tc_count LOG           adds a guest console's PASS/FAIL lines and LAB-RESULT to the
#                               counters (a guest that did not boot or finish is a failure)
# Guest: disk_at SLOT           the /dev/sdX behind the controller in PCI slot SLOT (hex)

tc_init() {
  tc_name=$1; pass=0; fail=0
}
ok() { echo "PASS $tc_name: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL $tc_name: $*"; fail=$((fail + 1)); }

tc_start_target() {
  local log=$1 conf=$2; shift 2
  "$@" setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs \
    "${PR_TARGET_BIN:?}" --config "$conf" --seccomp "${PR_TARGET_SECCOMP:-kill}" 2> "$log" &
  tc_pid=$!
  local _
  for _ in $(seq 600); do
    grep -q "ready" "$log" 2>/dev/null && return 0
    kill -0 "$tc_pid" 2>/dev/null || break
    sleep 0.05
  done
  ko "pr-target ($conf) did not become ready within 30 s: $(tail -3 "$log" | tr '\n' ' ')"
  return 1
}

tc_boot() {
  local log=$1 sock=$2 script=$3 append=$4 out
  out=${TC_BOOT_DIR:?}
  timeout --kill-after=10 "${TC_TIMEOUT:-600}" qemu-system-x86_64 -accel tcg -cpu max -m 1024 \
    -smp "${TC_SMP:-1}" -nographic -no-reboot -kernel "$out/vmlinuz" -initrd "$out/initrd.img" \
    -append "console=ttyS0 quiet no_timer_check panic=-1 labscript=$script $append labverbose=${LAB_VERBOSE:-0}" \
    -fsdev local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hr,mount_tag=hostroot \
    -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
    -chardev socket,id=c0,path="$sock" -device vhost-user-scsi-pci,chardev=c0,num_queues=1,addr=0x10 \
    > "$log" 2>&1 &
  tc_pid=$!
}

tc_count() {
  local log=$1 result
  tr -d '\r' < "$log" | grep -E '^(PASS |FAIL |  \| )' || true
  result=$(tr -d '\r' < "$log" | sed -n 's/^LAB-RESULT \([0-9]*\) \([0-9]*\)$/\1 \2/p' | tail -1)
  if ! grep -q "LAB-BOOTED" "$log"; then
    ko "the guest of $log did not boot"
    return 1
  elif [ -z "$result" ]; then
    ko "the guest script of $log did not finish"
    pass=$((pass + $(tr -d '\r' < "$log" | grep -c '^PASS ' || true)))
    fail=$((fail + $(tr -d '\r' < "$log" | grep -c '^FAIL ' || true)))
    return 1
  fi
  set -- $result
  pass=$((pass + $1)); fail=$((fail + $2))
  [ "$1" -gt 0 ] || { ko "the guest of $log ran no checks"; return 1; }
}

disk_at() {
  local d
  for d in /sys/block/sd*; do
    [ -e "$d" ] && readlink -f "$d" | grep -q "/0000:00:$1.0/" && echo "/dev/${d##*/}"
  done
}
