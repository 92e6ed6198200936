# Shell helpers for guest scripts that set up LIO by hand (the scenario files use pr-lab's own
# setup). Source it; needs configfs mounted.
cfg=/sys/kernel/config/target

# lio_lu NAME: a fresh 8 MiB fileio logical unit backed by /run/NAME.img.
lio_lu() {
  truncate -s 8M "/run/$1.img"
  mkdir -p "$cfg/core/fileio_0/$1"
  echo "fd_dev_name=/run/$1.img,fd_dev_size=8388608" > "$cfg/core/fileio_0/$1/control"
  echo 1 > "$cfg/core/fileio_0/$1/enable"
}

# lio_disk LU TARGET_WWN NEXUS_WWN: a tcm_loop target for one initiator (NEXUS_WWN) exporting
# LU as LUN 0; prints the /dev/sdX it appears as, with pending unit attentions consumed.
lio_disk() {
  local t=$cfg/loopback/$2/tpgt_1 addr d= s b
  mkdir -p "$t/lun"
  echo "$3" > "$t/nexus"
  mkdir -p "$t/lun/lun_0"
  ln -s "$cfg/core/fileio_0/$1" "$t/lun/lun_0/lu"
  addr=$(cat "$t/address")
  for s in $(seq 100); do
    for b in /sys/class/block/sd*; do
      [ "$(basename "$(readlink "$b/device")")" = "$addr:0" ] && d=$(basename "$b")
    done
    [ -n "$d" ] && [ -b "/dev/$d" ] && break
    sleep 0.1
  done
  [ -n "$d" ] || return 1
  for s in 1 2 3 4 5; do sg_turs "/dev/$d" >/dev/null 2>&1 && break; done
  echo "/dev/$d"
}
