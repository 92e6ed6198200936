//! Scenario files: what a lab scenario needs and the steps it runs.
//!
//! ```text
//! # comment
//! initiators 2            # I_T nexuses on every logical unit (1-8)
//! lus 2                   # logical units (1-4)
//! mode parity             # single | parity | differential
//! helper ours             # single mode only: ours | c
//! fabric loopback         # loopback (tcm_loop) | iscsi (open-iscsi over 127.0.0.1)
//! backend blkpr           # our helper's backend for LU 0: sgio (default) | blkpr
//!
//! I1 register -n 0x1111                  => good
//! I2 reserve -k 0x2222 -t ea             => conflict
//! I1 keys                                => good keys 0x1111 0x2222
//! I1 reservation                         => good holder 0x1111 we-ro
//! I2 raw --cdb 5e09 => check 05/24/00
//! I2 sg-persist status                   # pr-ctl's decoding equals sg_persist's
//! I1 write                               => conflict
//! I1 sweep-alloc 1-256                   # every PR IN service action at each allocation length
//! I1 read-ioctls 1-64                    # backend blkpr, Linux >= 6.19: READ KEYS/RESERVATION
//!                                        # through IOC_PR_READ_* equal sg_raw's on the same LU
//! random 7 2000                          # 2000 seeded random PR commands from every initiator
//! restart-helper
//! sleep 1
//! ```
//!
//! Commands after `In` use pr-ctl's syntax without the device, which the runner supplies.

use std::path::Path;

use clap::Parser;
use pr_ctl::cli::Cli;
use pr_ctl::Operation;
use pr_scsi::{ReservationKey, ReservationType};

/// How each step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through one helper on LU 0.
    Single,
    /// Through our helper on LU 0 and straight on the device (sg_raw) on LU 1; replies compared.
    Parity,
    /// Through our helper on LU 0 and QEMU's C helper on LU 1; replies compared byte for byte.
    Differential,
}

/// How the initiators reach the LUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fabric {
    /// tcm_loop: one loopback target per initiator (SAS transport IDs).
    Loopback,
    /// iSCSI over 127.0.0.1 with open-iscsi: one target, one session per initiator (iSCSI
    /// transport IDs). Needed for PREEMPT AND ABORT, which deadlocks LIO over tcm_loop.
    Iscsi,
}

/// The backend our helper uses for LU 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SG_IO passthrough (no configuration).
    Sgio,
    /// The block-layer PR ioctls, configured per device with `--config`.
    Blkpr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperKind {
    Ours,
    C,
}

/// The expected outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Good,
    Conflict,
    /// CHECK CONDITION, with the sense key/ASC/ASCQ if given.
    Check(Option<(u8, u8, u8)>),
    /// Whatever it is (parity and differential runs still compare the paths).
    Any,
}

/// What a successful read must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Keys(Vec<ReservationKey>),
    NoReservation,
    Holder(ReservationKey, ReservationType),
}

#[derive(Debug, Clone)]
pub enum Action {
    /// A PR command from initiator `initiator` (0-based).
    Command {
        initiator: usize,
        operation: Operation,
        expect: Expect,
        state: Option<State>,
    },
    /// pr-ctl's decoding of a read equals sg_persist's for the same device.
    SgPersist {
        initiator: usize,
        read: String,
    },
    /// A one-block direct write or read on the device.
    Io {
        initiator: usize,
        write: bool,
        expect: Expect,
    },
    /// Every PR IN service action (0-3) with each allocation length in `lengths`, on every
    /// path; our helper must still be running afterwards.
    SweepAlloc {
        initiator: usize,
        lengths: std::ops::RangeInclusive<u16>,
    },
    /// READ KEYS and READ RESERVATION at each allocation length in `lengths`, through our
    /// helper (backend blkpr: the IOC_PR_READ_KEYS / IOC_PR_READ_RESERVATION ioctls of Linux
    /// 6.19) and straight on the same device with sg_raw: byte-identical, and the helper must
    /// not have fallen back to SG_IO for them.
    ReadIoctls {
        initiator: usize,
        lengths: std::ops::RangeInclusive<u16>,
    },
    /// `steps` seeded random PR IN/OUT commands from all initiators (`crate::random`), on
    /// every path; our helper must still be running afterwards. With `probe`, every initiator
    /// reads the full status after each step, so that a divergence (unit attentions included)
    /// shows at the step that caused it (for replays).
    Random {
        seed: u64,
        steps: usize,
        probe: bool,
    },
    RestartHelper,
    Sleep(f64),
    /// Our helper runs as nobody with only CAP_SYS_RAWIO.
    CheckPrivileges,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub line: usize,
    pub text: String,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub initiators: usize,
    pub lus: usize,
    pub mode: Mode,
    pub helper: HelperKind,
    pub fabric: Fabric,
    pub backend: Backend,
    pub steps: Vec<Step>,
}

fn parse_initiator(w: &str, initiators: usize) -> Result<usize, String> {
    let n: usize = w
        .strip_prefix('I')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("'{w}' is not an initiator; expected I1, I2, …"))?;
    if n == 0 || n > initiators {
        return Err(format!(
            "initiator {w} does not exist; the scenario has {initiators} (set `initiators N` first)"
        ));
    }
    Ok(n - 1)
}

fn parse_sense(s: &str) -> Result<(u8, u8, u8), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let bad = || format!("'{s}' is not a sense code; expected KEY/ASC/ASCQ in hex, e.g. 05/24/00");
    if parts.len() != 3 {
        return Err(bad());
    }
    let b = |p: &str| u8::from_str_radix(p, 16).map_err(|_| bad());
    Ok((b(parts[0])?, b(parts[1])?, b(parts[2])?))
}

fn parse_expect(words: &[&str]) -> Result<(Expect, Option<State>), String> {
    let (first, rest) = words
        .split_first()
        .ok_or("nothing after '=>'; expected good, conflict, check [K/ASC/Q] or any")?;
    let (expect, rest) = match *first {
        "good" => (Expect::Good, rest),
        "conflict" => (Expect::Conflict, rest),
        "any" => (Expect::Any, rest),
        "check" => match rest.first() {
            Some(s) if s.contains('/') => (Expect::Check(Some(parse_sense(s)?)), &rest[1..]),
            _ => (Expect::Check(None), rest),
        },
        other => {
            return Err(format!(
                "unknown expectation '{other}'; expected good, conflict, check [K/ASC/Q] or any"
            ))
        }
    };
    let state = match rest {
        [] => None,
        ["keys", keys @ ..] => Some(State::Keys(
            keys.iter()
                .map(|k| pr_ctl::values::parse_key(k))
                .collect::<Result<_, _>>()?,
        )),
        ["none"] => Some(State::NoReservation),
        ["holder", key, t] => Some(State::Holder(
            pr_ctl::values::parse_key(key)?,
            pr_ctl::values::parse_type(t)?,
        )),
        other => {
            return Err(format!(
                "cannot read '{}'; after the status expected `keys K…`, `none` or `holder K TYPE`",
                other.join(" ")
            ))
        }
    };
    if state.is_some() && expect != Expect::Good {
        return Err("a state check needs `good`".into());
    }
    Ok((expect, state))
}

/// Parses one scenario file's text; `include FILE` lines read FILE from `dir`.
pub fn parse(name: &str, text: &str, dir: Option<&Path>) -> Result<Scenario, String> {
    let mut sc = Scenario {
        name: name.to_string(),
        initiators: 2,
        lus: 1,
        mode: Mode::Single,
        helper: HelperKind::Ours,
        fabric: Fabric::Loopback,
        backend: Backend::Sgio,
        steps: Vec::new(),
    };
    parse_into(&mut sc, name, text, dir, 0)?;
    if matches!(sc.mode, Mode::Parity | Mode::Differential) && sc.lus < 2 {
        return Err(format!(
            "{name}: mode parity and differential run on two logical units: set `lus 2`"
        ));
    }
    if sc.steps.is_empty() {
        return Err(format!("{name}: no steps"));
    }
    Ok(sc)
}

fn parse_into(
    sc: &mut Scenario,
    name: &str,
    text: &str,
    dir: Option<&Path>,
    depth: usize,
) -> Result<(), String> {
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let at = |e: String| format!("{name}:{line}: {e}\n    {content}");
        let (cmd_part, expect_part) = match content.split_once("=>") {
            Some((c, e)) => (c.trim(), Some(e.trim())),
            None => (content, None),
        };
        let words: Vec<&str> = cmd_part.split_whitespace().collect();
        let number = |w: Option<&&str>, lo: usize, hi: usize| -> Result<usize, String> {
            w.and_then(|w| w.parse().ok())
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("expected a number from {lo} to {hi}"))
        };
        let action = match words[0] {
            "initiators" => {
                sc.initiators = number(words.get(1), 1, 8).map_err(at)?;
                continue;
            }
            "lus" => {
                sc.lus = number(words.get(1), 1, 4).map_err(at)?;
                continue;
            }
            "mode" => {
                sc.mode = match words.get(1) {
                    Some(&"single") => Mode::Single,
                    Some(&"parity") => Mode::Parity,
                    Some(&"differential") => Mode::Differential,
                    _ => return Err(at("expected mode single, parity or differential".into())),
                };
                continue;
            }
            "fabric" => {
                sc.fabric = match words.get(1) {
                    Some(&"loopback") => Fabric::Loopback,
                    Some(&"iscsi") => Fabric::Iscsi,
                    _ => return Err(at("expected fabric loopback or iscsi".into())),
                };
                continue;
            }
            "backend" => {
                sc.backend = match words.get(1) {
                    Some(&"sgio") => Backend::Sgio,
                    Some(&"blkpr") => Backend::Blkpr,
                    _ => return Err(at("expected backend sgio or blkpr".into())),
                };
                continue;
            }
            "helper" => {
                sc.helper = match words.get(1) {
                    Some(&"ours") => HelperKind::Ours,
                    Some(&"c") => HelperKind::C,
                    _ => return Err(at("expected helper ours or c".into())),
                };
                continue;
            }
            "include" => {
                let file = words
                    .get(1)
                    .ok_or_else(|| at("expected include FILE".into()))?;
                let path = dir.unwrap_or(Path::new(".")).join(file);
                if depth > 0 {
                    return Err(at("an included file cannot include another".into()));
                }
                let inc = std::fs::read_to_string(&path)
                    .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
                parse_into(sc, file, &inc, dir, depth + 1)?;
                continue;
            }
            "random" => {
                let seed = words.get(1).and_then(|w| w.parse::<u64>().ok());
                let steps = number(words.get(2), 1, 100_000).ok();
                let probe = words.get(3) == Some(&"probe");
                match (seed, steps, words.len() - usize::from(probe)) {
                    (Some(seed), Some(steps), 3) => Action::Random { seed, steps, probe },
                    _ => {
                        return Err(at(
                            "expected random SEED STEPS [probe] (a seed of 0 to 2^64-1, 1 to 100000 steps)"
                                .into(),
                        ))
                    }
                }
            }
            "restart-helper" => Action::RestartHelper,
            "check-privileges" => Action::CheckPrivileges,
            "sleep" => Action::Sleep(
                words
                    .get(1)
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|s| (0.0..=60.0).contains(s))
                    .ok_or_else(|| at("expected sleep SECONDS (0-60)".into()))?,
            ),
            w if w.starts_with('I') => {
                let initiator = parse_initiator(w, sc.initiators).map_err(at)?;
                let sub = *words
                    .get(1)
                    .ok_or_else(|| at("expected a command after the initiator".into()))?;
                let (expect, state) = match expect_part {
                    Some(e) => {
                        parse_expect(&e.split_whitespace().collect::<Vec<_>>()).map_err(at)?
                    }
                    None => (Expect::Any, None),
                };
                match sub {
                    "sg-persist" => Action::SgPersist {
                        initiator,
                        read: words
                            .get(2)
                            .filter(|r| {
                                ["keys", "reservation", "capabilities", "status"].contains(r)
                            })
                            .ok_or_else(|| {
                                at("expected sg-persist keys|reservation|capabilities|status"
                                    .into())
                            })?
                            .to_string(),
                    },
                    "sweep-alloc" | "read-ioctls" => {
                        let bad = || {
                            at(format!(
                                "expected {sub} FROM-TO (allocation lengths, 0-8192)"
                            ))
                        };
                        let (from, to) = words
                            .get(2)
                            .and_then(|r| r.split_once('-'))
                            .ok_or_else(bad)?;
                        let n = |v: &str| v.parse::<u16>().ok().filter(|n| *n <= 8192);
                        match (n(from), n(to), words.len()) {
                            (Some(from), Some(to), 3) if from <= to && sub == "sweep-alloc" => {
                                Action::SweepAlloc {
                                    initiator,
                                    lengths: from..=to,
                                }
                            }
                            (Some(from), Some(to), 3) if from <= to => Action::ReadIoctls {
                                initiator,
                                lengths: from..=to,
                            },
                            _ => return Err(bad()),
                        }
                    }
                    "write" | "read" => Action::Io {
                        initiator,
                        write: sub == "write",
                        expect,
                    },
                    _ => {
                        let mut argv = vec!["pr-ctl", sub];
                        if sub == "raw" {
                            argv.extend(["-d", "/dev/null"]);
                        } else {
                            argv.push("/dev/null");
                        }
                        argv.extend(&words[2..]);
                        let cli = Cli::try_parse_from(&argv)
                            .map_err(|e| at(e.to_string().trim().to_string()))?;
                        let operation = cli
                            .command
                            .operation()
                            .map_err(|f| at(f.message))?
                            .ok_or_else(|| at(format!("'{sub}' is not a device command")))?
                            .1;
                        Action::Command {
                            initiator,
                            operation,
                            expect,
                            state,
                        }
                    }
                }
            }
            other => return Err(at(format!("unknown directive '{other}'"))),
        };
        sc.steps.push(Step {
            line,
            text: content.to_string(),
            action,
        });
    }
    Ok(())
}

/// Reads and parses a scenario file; its name is the file stem.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    parse(&name, &text, path.parent())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_directive() {
        let sc = parse(
            "t",
            "initiators 2\nlus 2\nmode parity\n\
             I1 register -n 0x1111 => good\n\
             I2 reserve -k 0x2222 -t ea => conflict # comment\n\
             I1 keys => good keys 0x1111 0x2222\n\
             I1 reservation => good holder 0x1111 we-ro\n\
             I2 raw --cdb 5e09 => check 05/24/00\n\
             I2 sg-persist status\nI1 write => conflict\nrestart-helper\nsleep 0.5\n\
             I2 sweep-alloc 1-256\nrandom 18446744073709551615 2000\n",
            None,
        )
        .unwrap();
        assert_eq!(sc.mode, Mode::Parity);
        assert_eq!(sc.steps.len(), 11);
        match (&sc.steps[9].action, &sc.steps[10].action) {
            (
                Action::SweepAlloc { initiator, lengths },
                Action::Random {
                    seed,
                    steps,
                    probe: false,
                },
            ) => {
                assert_eq!(
                    (*initiator, lengths.clone(), *seed, *steps),
                    (1, 1..=256, u64::MAX, 2000)
                )
            }
            a => panic!("{a:?}"),
        }
        match &sc.steps[3].action {
            Action::Command { state, .. } => assert_eq!(
                state,
                &Some(State::Holder(
                    ReservationKey(0x1111),
                    ReservationType::WriteExclusiveRegistrantsOnly
                ))
            ),
            a => panic!("{a:?}"),
        }
        match &sc.steps[4].action {
            Action::Command { expect, .. } => {
                assert_eq!(expect, &Expect::Check(Some((5, 0x24, 0))))
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn the_lab_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lab/scenarios");
        let mut n = 0;
        // lab/scenarios/target: the scenarios only `--against target` runs.
        for d in [dir.clone(), dir.join("target")] {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "scn") {
                    load(&p).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 6, "only {n} scenarios in {}", dir.display());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("t", "initiators 1\nI2 keys\n", None).unwrap_err();
        assert!(e.starts_with("t:2:") && e.contains("does not exist"), "{e}");
        let e = parse("t", "I1 reserve -k zz -t we\n", None).unwrap_err();
        assert!(e.contains("'zz' is not a reservation key"), "{e}");
        let e = parse("t", "mode parity\nI1 keys\n", None).unwrap_err();
        assert!(e.contains("lus 2"), "{e}");
        let e = parse("t", "I1 keys => maybe\n", None).unwrap_err();
        assert!(e.contains("unknown expectation"), "{e}");
        for bad in [
            "I1 sweep-alloc 9-2",
            "I1 sweep-alloc 1-9000",
            "I1 sweep-alloc 5",
            "I1 sweep-alloc",
        ] {
            let e = parse("t", bad, None).unwrap_err();
            assert!(e.contains("expected sweep-alloc FROM-TO"), "{bad}: {e}");
        }
        for bad in [
            "random",
            "random 1",
            "random x 5",
            "random 1 0",
            "random 1 5 6",
        ] {
            let e = parse("t", bad, None).unwrap_err();
            assert!(e.contains("expected random SEED STEPS"), "{bad}: {e}");
        }
    }
}
