# Sourced by lab/guest.sh: the emulate backend's part of the lab, counted in its totals.
# - lab/emulate.sh: the parity and cluster scenarios again, against the emulation (pr-lab
#   --against emulate), byte for byte against LIO except the listed SPC-4 departures;
# - lab/nested-emulate.sh: an unmodified QEMU with two pr-manager-helper sockets (two daemons,
#   two initiators) on one emulated LU, and iscsi-test-cu's PR tests on the emulation and on LIO.
# Runs before lab/multipath.sh: once device-mapper is loaded our daemon keeps CAP_SYS_ADMIN,
# which the scenarios' check-privileges steps would see.
emulate_part() {
  local o=/run/lab-emulate.out n=/run/lab-nested-emulate.out
  bash $TOP/lab/emulate.sh 2>&1 | tee $o
  pass=$((pass + $(grep -c '^PASS ' $o))); fail=$((fail + $(grep -c '^FAIL ' $o)))
  grep -q '^LAB-SCENARIOS ' $o || { echo "FAIL emulate: pr-lab --against emulate did not finish"; fail=$((fail+1)); }
  bash $TOP/lab/nested-emulate.sh 2>&1 | tee $n
  pass=$((pass + $(grep -c '^PASS ' $n))); fail=$((fail + $(grep -c '^FAIL ' $n)))
  grep -q '^lab: nested-emulate scenario took' $n || { echo "FAIL nested-emulate: the scenario did not finish"; fail=$((fail+1)); }
}
