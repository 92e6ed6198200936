#!/bin/bash
# Runs inside the lab guest: the parity and cluster scenarios once more, against our emulation
# (pr-lab --against emulate): every initiator through an emulate daemon of its own, configured
# with that initiator's LIO TransportID and relative target port, all on one SQLite store;
# LIO answers the same commands on another LU and every reply must be byte-identical except
# the SPC-4 departures listed in crates/lab/src/emulate.rs (docs/emulation.md).
# Prints pr-lab's PASS/FAIL lines and its closing LAB-SCENARIOS line.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BIN=$TOP/target/release
S=$TOP/lab/scenarios
verbose=; grep -q 'labverbose=1' /proc/cmdline && verbose=-v
$BIN/pr-lab run --bin-dir "$BIN" --against emulate $verbose \
  $S/parity.scn $S/fence-scsi.scn $S/windows-arbitration.scn $S/preempt-abort-parity.scn
