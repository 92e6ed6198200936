//! Running a scenario: LIO set up for it, the helpers it needs, each step on every path, the
//! paths compared, the expectations checked.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pr_client::Client;
use pr_ctl::Operation;
use pr_scsi::prin::{ReadKeys, ReadReservation};
use pr_scsi::{Sense, Status};

use crate::emulate::{Against, Emulation};
use crate::helpers::{Binaries, Helper};
use crate::lio::Lio;
use crate::scenario::{Action, Backend, Expect, HelperKind, Mode, Scenario, State};
use crate::target::Targets;
use crate::{random, sgp};

/// One reply, whichever way it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u8,
    /// Sense bytes with trailing zeros removed (helpers pad to 96 bytes, sg_raw shows the
    /// device's length).
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
}

impl Answer {
    pub(crate) fn describe(&self) -> String {
        let status = Status(self.status);
        let mut s = status
            .name()
            .map_or(format!("status {:#04x}", self.status), str::to_string);
        if let Some(sense) = Sense::parse(&self.sense) {
            s.push_str(&format!(
                " {:02x}/{:02x}/{:02x}",
                sense.code.key.0, sense.code.asc, sense.code.ascq
            ));
        }
        if !self.data.is_empty() {
            s.push_str(&format!(" data {}", pr_ctl::values::hex(&self.data)));
        }
        s
    }
}

fn trim_sense(s: &[u8]) -> Vec<u8> {
    let end = s.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    s[..end].to_vec()
}

/// A way to send a command to an LU.
enum Way {
    Helper {
        socket: PathBuf,
        client: Option<Client>,
    },
    Direct,
    /// The emulate backend: initiator i's commands through its own daemon (`sockets[i]`).
    Emulate {
        sockets: Vec<PathBuf>,
        clients: Vec<Option<Client>>,
    },
    /// pr-target: initiator i's commands straight on its disk of the scenario's LU (sg_raw).
    Target {
        devices: Vec<PathBuf>,
    },
}

impl Way {
    fn name(&self) -> &'static str {
        match self {
            Way::Helper { .. } => "helper",
            Way::Direct => "sg_raw",
            Way::Emulate { .. } => "emulate",
            Way::Target { .. } => "pr-target",
        }
    }
}

fn via_helper(
    socket: &Path,
    client: &mut Option<Client>,
    device: &Path,
    op: &Operation,
) -> Result<Answer, String> {
    let (cdb, params) = op.request();
    let dev = OpenOptions::new()
        .read(true)
        .write(op.writes())
        .open(device)
        .map_err(|e| format!("open {}: {e}", device.display()))?;
    if client.is_none() {
        *client = Some(
            Client::connect_with_timeout(socket, Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?,
        );
    }
    let c = client.as_mut().expect("connected above");
    let reply = c.execute(dev.as_fd(), &cdb, &params).map_err(|e| {
        *client = None;
        e.to_string()
    })?;
    Ok(Answer {
        status: reply.status.0,
        sense: trim_sense(&reply.sense),
        data: reply.data,
    })
}

/// The same command straight on the device with sg3_utils' sg_raw: the independent reference.
pub(crate) fn via_sg_raw(device: &Path, op: &Operation) -> Result<Answer, String> {
    let (cdb, params) = op.request();
    let out_file = Path::new("/run/lab/sg_raw.out");
    let in_file = Path::new("/run/lab/sg_raw.in");
    let _ = std::fs::remove_file(out_file);
    let mut cmd = crate::bounded("sg_raw");
    cmd.args(["-vv", "-t", "60"]);
    if op.writes() {
        std::fs::write(in_file, &params).map_err(|e| e.to_string())?;
        cmd.arg("-s")
            .arg(params.len().to_string())
            .arg("-i")
            .arg(in_file);
    } else {
        let alloc = u16::from_be_bytes([cdb[7], cdb[8]]);
        cmd.arg("-r").arg(alloc.to_string()).arg("-o").arg(out_file);
    }
    cmd.arg(device);
    for b in &cdb[..10] {
        cmd.arg(format!("{b:02x}"));
    }
    let out = cmd.output().map_err(|e| format!("sg_raw: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status_line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("SCSI Status: "))
        .ok_or_else(|| format!("sg_raw printed no SCSI status:\n{text}"))?;
    let status = match status_line.trim().to_ascii_lowercase().as_str() {
        "good" => Status::GOOD,
        "check condition" => Status::CHECK_CONDITION,
        "condition met" => Status::CONDITION_MET,
        "busy" => Status::BUSY,
        "reservation conflict" => Status::RESERVATION_CONFLICT,
        "task set full" => Status::TASK_SET_FULL,
        "aca active" => Status::ACA_ACTIVE,
        "task aborted" => Status::TASK_ABORTED,
        other => return Err(format!("sg_raw status '{other}' not understood:\n{text}")),
    };
    let mut sense = Vec::new();
    let mut in_sense = false;
    for l in text.lines() {
        if l.contains("Raw sense data (in hex)") {
            in_sense = true;
            continue;
        }
        if in_sense {
            let bytes: Vec<u8> = l
                .split_whitespace()
                .map_while(|w| {
                    (w.len() == 2)
                        .then(|| u8::from_str_radix(w, 16).ok())
                        .flatten()
                })
                .collect();
            if bytes.is_empty() {
                break;
            }
            sense.extend(bytes);
        }
    }
    let data = if status == Status::GOOD && !op.writes() {
        std::fs::read(out_file).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Answer {
        status: status.0,
        sense: trim_sense(&sense),
        data,
    })
}

fn check_expect(expect: &Expect, a: &Answer) -> Result<(), String> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Good => a.status == Status::GOOD.0,
        Expect::Conflict => a.status == Status::RESERVATION_CONFLICT.0,
        Expect::Check(None) => a.status == Status::CHECK_CONDITION.0,
        Expect::Check(Some((k, asc, ascq))) => {
            a.status == Status::CHECK_CONDITION.0
                && Sense::parse(&a.sense)
                    .is_some_and(|s| (s.code.key.0, s.code.asc, s.code.ascq) == (*k, *asc, *ascq))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got {}", a.describe()))
    }
}

fn check_state(state: &State, op: &Operation, a: &Answer) -> Result<(), String> {
    let sa = op.request().0[1] & 0x1f;
    match state {
        State::Keys(want) => {
            if sa != 0 {
                return Err("a keys check needs a keys read".into());
            }
            let got = ReadKeys::decode(&a.data).map_err(|e| e.to_string())?.keys;
            if &got != want {
                return Err(format!("keys are {got:?}, expected {want:?}"));
            }
        }
        State::NoReservation | State::Holder(..) => {
            if sa != 1 {
                return Err("a reservation check needs a reservation read".into());
            }
            let r = ReadReservation::decode(&a.data)
                .map_err(|e| e.to_string())?
                .reservation;
            let got = r.map(|d| (d.key, d.type_code));
            let want = match state {
                State::Holder(k, t) => Some((*k, t.code())),
                _ => None,
            };
            if got != want {
                return Err(format!("reservation is {got:?}, expected {want:?}"));
            }
        }
    }
    Ok(())
}

fn io(device: &Path, write: bool) -> Result<bool, String> {
    let mut cmd = crate::bounded("dd");
    if write {
        cmd.args(["if=/dev/zero", "oflag=direct"])
            .arg(format!("of={}", device.display()));
    } else {
        cmd.args(["of=/dev/null", "iflag=direct"])
            .arg(format!("if={}", device.display()));
    }
    let st = cmd
        .args(["bs=512", "count=1", "status=none"])
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("dd: {e}"))?;
    Ok(st.success())
}

/// Sends one command through every path (initiator `initiator`, each path's LU) and checks
/// that every path gave the same answer, byte for byte; returns the answers. Against the
/// emulation (the second path), a difference is allowed only when it is exactly one of the
/// listed SPC-4 departures ([`crate::emulate::DEPARTURES`]), whose name is returned.
fn on_every_path(
    paths: &mut [(Way, usize)],
    lio: &Lio,
    initiator: usize,
    operation: &Operation,
) -> Result<(Vec<Answer>, Option<&'static crate::emulate::Departure>), String> {
    let mut answers = Vec::new();
    for (path, lu) in paths.iter_mut() {
        let dev = &lio.devices[initiator][*lu];
        let name = path.name();
        let a = match path {
            Way::Helper { socket, client } => via_helper(socket, client, dev, operation),
            Way::Direct => via_sg_raw(dev, operation),
            Way::Emulate { sockets, clients } => {
                via_helper(&sockets[initiator], &mut clients[initiator], dev, operation)
            }
            Way::Target { devices } => via_sg_raw(&devices[initiator], operation)
                .map_err(|e| format!("on {}: {e}", devices[initiator].display())),
        }
        .map_err(|e| format!("{name} on {}: {e}", dev.display()))?;
        answers.push(a);
    }
    let mut allowed = None;
    if let Some(other) = answers.get(1) {
        if other != &answers[0] {
            let departure = match paths[1].0 {
                Way::Emulate { .. } | Way::Target { .. } => {
                    crate::emulate::departure(&operation.request().0, &answers[0], other)
                }
                _ => None,
            };
            match departure {
                Some(d) => allowed = Some(d),
                None => {
                    return Err(format!(
                        "the paths differ: {} gave {} (sense {}), {} gave {} (sense {})",
                        paths[0].0.name(),
                        answers[0].describe(),
                        pr_ctl::values::hex(&answers[0].sense),
                        paths[1].0.name(),
                        other.describe(),
                        pr_ctl::values::hex(&other.sense)
                    ))
                }
            }
        }
    }
    Ok((answers, allowed))
}

/// LIO's departure when the allocation length ends inside the data: it writes only what fits
/// whole and leaves the rest as zeros, where SPC-4 4.2.5.6 transfers the data truncated at the
/// allocation length. READ KEYS: whole keys only (core_scsi3_pri_read_keys); READ RESERVATION
/// with a reservation held: the descriptor only from an allocation length of 22
/// (core_scsi3_pri_read_reservation), so below that just the header. So `ours` (the ioctl's
/// answer, truncated as SPC-4 says) and `lio` agree up to there, LIO's bytes after it are
/// zeros, and everything else is equal.
fn lio_zeroes_partial_data(sa: u8, alloc: u16, ours: &Answer, lio: &Answer) -> bool {
    let alloc = usize::from(alloc);
    let whole = match sa {
        0 if alloc >= 8 => 8 + (alloc - 8) / 8 * 8,
        1 if (9..22).contains(&alloc) => 8,
        _ => return false,
    };
    ours.status == lio.status
        && ours.sense == lio.sense
        && ours.data.len() == lio.data.len()
        && ours.data.len() > whole
        && ours.data[..whole] == lio.data[..whole]
        && lio.data[whole..].iter().all(|b| *b == 0)
}

/// A PERSISTENT RESERVE IN with service action `sa` and allocation length `alloc`.
fn pr_in(sa: u8, alloc: u16) -> Operation {
    let mut cdb = [0u8; 16];
    cdb[0] = pr_scsi::PERSISTENT_RESERVE_IN;
    cdb[1] = sa;
    cdb[7..9].copy_from_slice(&alloc.to_be_bytes());
    Operation::Raw {
        cdb,
        data: Vec::new(),
    }
}

/// Our helper has not died (a device that corrupted its memory would have killed it).
fn ours_alive(helpers: &mut [Helper]) -> Result<(), String> {
    for h in helpers.iter_mut().filter(|h| h.kind == HelperKind::Ours) {
        if let Some(status) = h.exited() {
            return Err(format!(
                "our helper exited ({status}); its log:\n{}",
                h.log_text()
            ));
        }
    }
    Ok(())
}

/// Runs a scenario. Returns the transcript; Err carries the transcript and the failure.
pub fn run(
    sc: &Scenario,
    index: usize,
    bins: &Binaries,
    against: Against,
    targets: Option<&Targets>,
) -> Result<Vec<String>, (Vec<String>, String)> {
    let mut log = Vec::new();
    let result = match (against, targets) {
        (Against::Lio, _) => run_inner(sc, index, bins, &mut log),
        (Against::Emulate, _) => run_emulated(sc, index, bins, &mut log),
        (Against::Target, Some(t)) => run_on_target(sc, index, bins, t, &mut log),
        (Against::Target, None) => Err("--against target: no pr-target disks found".into()),
    };
    match result {
        Ok(()) => Ok(log),
        Err(e) => Err((log, e)),
    }
}

fn run_inner(
    sc: &Scenario,
    index: usize,
    bins: &Binaries,
    log: &mut Vec<String>,
) -> Result<(), String> {
    let lio = Lio::setup(&sc.name, index, sc.lus, sc.initiators, sc.fabric)?;
    let mut helpers = Vec::new();
    // paths[k] = (how, which LU)
    let mut paths: Vec<(Way, usize)> = Vec::new();
    let first = match sc.mode {
        Mode::Single => sc.helper,
        _ => HelperKind::Ours,
    };
    // backend blkpr: every initiator's LU 0 named in our helper's device configuration.
    let config = match sc.backend {
        Backend::Sgio => None,
        Backend::Blkpr => Some(
            lio.devices
                .iter()
                .map(|per_lu| {
                    format!(
                        "[[device]]\npath = \"{}\"\nbackend = \"blkpr\"\n",
                        per_lu[0].display()
                    )
                })
                .collect::<String>(),
        ),
    };
    helpers.push(Helper::start(first, bins, &sc.name, config.as_deref())?);
    paths.push((
        Way::Helper {
            socket: helpers[0].socket.clone(),
            client: None,
        },
        0,
    ));
    match sc.mode {
        Mode::Single => {}
        Mode::Parity => paths.push((Way::Direct, 1)),
        Mode::Differential => {
            helpers.push(Helper::start(HelperKind::C, bins, &sc.name, None)?);
            paths.push((
                Way::Helper {
                    socket: helpers[1].socket.clone(),
                    client: None,
                },
                1,
            ));
        }
    }
    run_steps(sc, bins, &lio, &mut helpers, &mut paths, None, log)?;
    drop(helpers);
    drop(lio);
    Ok(())
}

/// The scenario against the emulation: LIO answers on LU 1 straight from the device (sg_raw),
/// the emulated LU on LU 0's device numbers through one emulate daemon per initiator.
fn run_emulated(
    sc: &Scenario,
    index: usize,
    bins: &Binaries,
    log: &mut Vec<String>,
) -> Result<(), String> {
    // Names and target WWNs of their own, so that one guest can run a scenario both ways.
    let tag = format!("{}-emu", sc.name);
    let index = index + 0x100;
    // LU 0: the emulated LU's device numbers; LU 1: LIO's answers; the last: a scratch LU on
    // which LIO names each initiator's nexus (emulate::lio_nexuses).
    let lus = sc.lus.max(2) + 1;
    let lio = Lio::setup(&tag, index, lus, sc.initiators, sc.fabric)?;
    let (mut emulation, mut helpers) = Emulation::start(&tag, &lio, 0, lus - 1, bins)?;
    log.push(format!("emulate: {}", emulation.describe()));
    let mut paths = vec![
        (Way::Direct, 1),
        (
            Way::Emulate {
                sockets: helpers.iter().map(|h| h.socket.clone()).collect(),
                clients: (0..sc.initiators).map(|_| None).collect(),
            },
            0,
        ),
    ];
    run_steps(
        sc,
        bins,
        &lio,
        &mut helpers,
        &mut paths,
        Some(&mut emulation),
        log,
    )?;
    drop(helpers);
    drop(emulation);
    drop(lio);
    Ok(())
}

/// The scenario against pr-target: LIO answers on its LU 0 straight from the device (sg_raw),
/// pr-target on the disks of the LU with serial `lab-NAME` of the sockets that are the
/// nexuses LIO names for the scenario's initiators (crate::target).
fn run_on_target(
    sc: &Scenario,
    index: usize,
    bins: &Binaries,
    targets: &Targets,
    log: &mut Vec<String>,
) -> Result<(), String> {
    let tag = format!("{}-tgt", sc.name);
    let index = index + 0x200;
    // LU 0: LIO's answers; LU 1: the scratch LU on which LIO names each initiator's nexus.
    let lio = Lio::setup(&tag, index, 2, sc.initiators, sc.fabric)?;
    let nexuses = crate::emulate::lio_nexuses(&lio, 1)?;
    let serial = format!("lab-{}", sc.name);
    let devices = targets.disks_for(&nexuses, &serial)?;
    log.push(format!(
        "pr-target: {}",
        devices
            .iter()
            .zip(&nexuses)
            .enumerate()
            .map(|(i, (d, n))| format!(
                "I{} = {} ({} on relative target port {}; LIO: {})",
                i + 1,
                d.display(),
                n.initiator,
                n.relative_target_port.0,
                lio.devices[i][0].display()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let mut paths = vec![(Way::Direct, 0), (Way::Target { devices }, 0)];
    let mut helpers = Vec::new();
    run_steps(sc, bins, &lio, &mut helpers, &mut paths, None, log)?;
    drop(lio);
    Ok(())
}

/// pr-target's disks when the scenario runs against it.
fn target_devices(paths: &[(Way, usize)]) -> Option<&[PathBuf]> {
    paths.iter().find_map(|(w, _)| match w {
        Way::Target { devices } => Some(devices.as_slice()),
        _ => None,
    })
}

/// `sg_persist -n --in` with the flag of `read` on `dev`: its text output.
fn sg_persist_in(read: &str, dev: &Path) -> Result<String, String> {
    let flag = match read {
        "keys" => "-k",
        "reservation" => "-r",
        "capabilities" => "-c",
        _ => "-s",
    };
    let sg = crate::bounded("sg_persist")
        .args(["-n", "--in", flag])
        .arg(dev)
        .output()
        .map_err(|e| format!("sg_persist: {e}"))?;
    let text = String::from_utf8_lossy(&sg.stdout).into_owned();
    if !sg.status.success() {
        return Err(format!(
            "sg_persist on {} failed: {text}{}",
            dev.display(),
            String::from_utf8_lossy(&sg.stderr)
        ));
    }
    Ok(text)
}

/// Runs every step of the scenario on `paths`. With `emulation`, `helpers[i]` is initiator
/// i's emulate daemon and the first path is LIO's answer, which the expectations describe.
#[allow(clippy::too_many_arguments)]
fn run_steps(
    sc: &Scenario,
    bins: &Binaries,
    lio: &Lio,
    helpers: &mut [Helper],
    paths: &mut [(Way, usize)],
    mut emulation: Option<&mut Emulation>,
    log: &mut Vec<String>,
) -> Result<(), String> {
    for step in &sc.steps {
        let at = |e: String| format!("line {} `{}`: {e}", step.line, step.text);
        let t0 = Instant::now();
        match &step.action {
            Action::Command {
                initiator,
                operation,
                expect,
                state,
            } => {
                let (answers, departure) =
                    on_every_path(paths, lio, *initiator, operation).map_err(at)?;
                let other = if target_devices(paths).is_some() {
                    "pr-target"
                } else {
                    "emulated"
                };
                log.push(format!(
                    "{:<60} {} ({} ms){}",
                    step.text,
                    answers[0].describe(),
                    t0.elapsed().as_millis(),
                    departure.map_or(String::new(), |d| format!(
                        "\n      {other}: {}: departure \"{}\", {}",
                        answers[1].describe(),
                        d.name,
                        d.clause
                    ))
                ));
                check_expect(expect, &answers[0]).map_err(at)?;
                if let Some(s) = state {
                    check_state(s, operation, &answers[0]).map_err(at)?;
                }
            }
            Action::SweepAlloc { initiator, lengths } => {
                let mut n = 0;
                for sa in 0..=3u8 {
                    for alloc in lengths.clone() {
                        let op = pr_in(sa, alloc);
                        on_every_path(paths, lio, *initiator, &op).map_err(|e| {
                            at(format!(
                                "service action {sa}, allocation length {alloc}: {e}"
                            ))
                        })?;
                        n += 1;
                    }
                }
                ours_alive(helpers).map_err(at)?;
                log.push(format!(
                    "{:<60} {n} commands, identical on every path ({} ms)",
                    step.text,
                    t0.elapsed().as_millis()
                ));
            }
            Action::ReadIoctls { initiator, lengths } => {
                if sc.backend != Backend::Blkpr {
                    return Err(at("read-ioctls needs `backend blkpr`".into()));
                }
                let before = helpers[0].log_text().len();
                // Our helper and sg_raw on the same device: the ioctls' answers against the
                // device's own.
                let mut ours_path = [(
                    Way::Helper {
                        socket: helpers[0].socket.clone(),
                        client: None,
                    },
                    0,
                )];
                let mut direct_path = [(Way::Direct, 0)];
                let (mut n, mut partial) = (0, 0);
                for sa in [0u8, 1] {
                    for alloc in lengths.clone() {
                        let op = pr_in(sa, alloc);
                        let what = format!("service action {sa}, allocation length {alloc}");
                        let ours = on_every_path(&mut ours_path, lio, *initiator, &op)
                            .map_err(|e| at(format!("{what}: {e}")))?
                            .0
                            .remove(0);
                        let direct = on_every_path(&mut direct_path, lio, *initiator, &op)
                            .map_err(|e| at(format!("{what}: {e}")))?
                            .0
                            .remove(0);
                        if ours.status != 0 {
                            return Err(at(format!("{what}: {}", ours.describe())));
                        }
                        if ours != direct {
                            if !lio_zeroes_partial_data(sa, alloc, &ours, &direct) {
                                return Err(at(format!(
                                    "{what}: our helper gave {}, sg_raw gave {}",
                                    ours.describe(),
                                    direct.describe()
                                )));
                            }
                            partial += 1;
                        }
                        n += 1;
                    }
                }
                ours_alive(helpers).map_err(at)?;
                // The helper logs (at -v) each time it answers a read through SG_IO instead.
                let text = helpers[0].log_text();
                let new = text.get(before..).unwrap_or_default();
                let used = new.matches("IOC_PR_READ").count();
                if let Some(line) = new.lines().find(|l| l.contains("using it")) {
                    return Err(at(format!(
                        "the helper fell back to SG_IO, so the read ioctls were not used: {line}"
                    )));
                }
                if !new.contains("ReadKeys") || !new.contains("ReadReservation") {
                    return Err(at(format!(
                        "the helper's log does not show the reads as block-layer commands \
                         ({used} ioctl lines):\n{new}"
                    )));
                }
                log.push(format!(
                    "{:<60} {n} reads through IOC_PR_READ_KEYS/RESERVATION, identical to \
                     sg_raw's on the same device ({partial} of them but for the partial data \
                     LIO leaves as zeros) ({} ms)",
                    step.text,
                    t0.elapsed().as_millis()
                ));
            }
            Action::Random { seed, steps, probe } => {
                let who = random::Initiators {
                    count: sc.initiators,
                    fabric: sc.fabric,
                };
                let mut rng = random::Rng::new(*seed);
                let mut statuses = std::collections::BTreeMap::new();
                // The steps before a failure, which it is usually a consequence of.
                let mut recent = std::collections::VecDeque::new();
                for k in 1..=*steps {
                    let (initiator, op) = random::step(&mut rng, who);
                    let (cdb, data) = op.request();
                    let what = format!(
                        "step {k}: I{} cdb {} data {}",
                        initiator + 1,
                        pr_ctl::values::hex(&cdb[..10]),
                        pr_ctl::values::hex(&data)
                    );
                    let (answers, _) = on_every_path(paths, lio, initiator, &op).map_err(|e| {
                        at(format!(
                            "random {what} (seed {seed}: replay with `random {seed} {k}`): {e}\n\
                             the {} steps before it:\n{}",
                            recent.len(),
                            Vec::from(recent.clone()).join("\n")
                        ))
                    })?;
                    for prober in (0..sc.initiators).filter(|_| *probe) {
                        let read = pr_in(3, 8192);
                        on_every_path(paths, lio, prober, &read).map_err(|e| {
                            at(format!(
                                "random {what} (seed {seed}): I{}'s READ FULL STATUS after it: \
                                 {e}\nthe {} steps before it:\n{}",
                                prober + 1,
                                recent.len(),
                                Vec::from(recent.clone()).join("\n")
                            ))
                        })?;
                    }
                    if recent.len() == 40 {
                        recent.pop_front();
                    }
                    recent.push_back(format!("{what} => {}", answers[0].describe()));
                    *statuses.entry(answers[0].status).or_insert(0usize) += 1;
                }
                ours_alive(helpers).map_err(at)?;
                log.push(format!(
                    "{:<60} {steps} commands, identical on every path; statuses {statuses:02x?} \
                     ({} ms)",
                    step.text,
                    t0.elapsed().as_millis()
                ));
            }
            Action::SgPersist { initiator, read } if target_devices(paths).is_some() => {
                // Against pr-target: sg_persist reads LIO and pr-target; its decodings of the
                // two must be equal (the bytes are compared by the `status`-style steps).
                let theirs = target_devices(paths).expect("checked")[*initiator].clone();
                let lio_text = sg_persist_in(read, &lio.devices[*initiator][0]).map_err(at)?;
                let tgt_text = sg_persist_in(read, &theirs).map_err(at)?;
                let mut on_lio = sgp::decode(read, &lio_text).map_err(at)?;
                let mut on_target = sgp::decode(read, &tgt_text).map_err(at)?;
                if read == "capabilities" {
                    // The REPORT CAPABILITIES departure (crate::emulate::DEPARTURES).
                    for v in [&mut on_lio, &mut on_target] {
                        if let Some(m) = v.as_object_mut() {
                            m.remove("crh");
                        }
                    }
                }
                log.push(format!("{:<60} {on_target}", step.text));
                if on_lio != on_target {
                    return Err(at(format!(
                        "sg_persist reads LIO and pr-target differently:\n  LIO:       {on_lio}\n  \
                         pr-target: {on_target}\n  sg_persist said on LIO:\n{lio_text}\n  on \
                         pr-target:\n{tgt_text}"
                    )));
                }
            }
            Action::SgPersist { initiator, read } => {
                // sg_persist reads LIO; pr-ctl reads through our helper (passthrough on the
                // same device) or, against the emulation, initiator's own emulate daemon.
                let (dev, ctl_dev, ctl_socket) = match emulation {
                    Some(_) => (
                        &lio.devices[*initiator][1],
                        &lio.devices[*initiator][0],
                        &helpers[*initiator].socket,
                    ),
                    None => (
                        &lio.devices[*initiator][0],
                        &lio.devices[*initiator][0],
                        &helpers[0].socket,
                    ),
                };
                let flag = match read.as_str() {
                    "keys" => "-k",
                    "reservation" => "-r",
                    "capabilities" => "-c",
                    _ => "-s",
                };
                let sg = crate::bounded("sg_persist")
                    .args(["-n", "--in", flag])
                    .arg(dev)
                    .output()
                    .map_err(|e| at(format!("sg_persist: {e}")))?;
                let sg_text = String::from_utf8_lossy(&sg.stdout).into_owned();
                if !sg.status.success() {
                    return Err(at(format!(
                        "sg_persist failed: {sg_text}{}",
                        String::from_utf8_lossy(&sg.stderr)
                    )));
                }
                let ctl = Command::new(&bins.pr_ctl)
                    .arg("--socket")
                    .arg(ctl_socket)
                    .args(["--json", read.as_str()])
                    .arg(ctl_dev)
                    .output()
                    .map_err(|e| at(format!("pr-ctl: {e}")))?;
                if !ctl.status.success() {
                    return Err(at(format!(
                        "pr-ctl failed: {}",
                        String::from_utf8_lossy(&ctl.stderr)
                    )));
                }
                let ours: serde_json::Value = serde_json::from_slice(&ctl.stdout)
                    .map_err(|e| at(format!("pr-ctl printed invalid JSON: {e}")))?;
                let mut ours = sgp::project(read, &ours);
                let mut theirs = sgp::decode(read, &sg_text).map_err(at)?;
                if emulation.is_some() && read == "capabilities" {
                    // The REPORT CAPABILITIES departure (crate::emulate::DEPARTURES): CRH
                    // differs by design; the byte-level comparison of the `capabilities`
                    // command checks its exact value.
                    for v in [&mut ours, &mut theirs] {
                        if let Some(m) = v.as_object_mut() {
                            m.remove("crh");
                        }
                    }
                }
                log.push(format!("{:<60} {ours}", step.text));
                if ours != theirs {
                    return Err(at(format!(
                        "pr-ctl and sg_persist disagree:\n  pr-ctl:     {ours}\n  sg_persist: {theirs}\n  \
                         sg_persist said:\n{sg_text}"
                    )));
                }
            }
            Action::Io {
                initiator,
                write,
                expect,
            } => {
                let mut results = Vec::new();
                for (way, lu) in paths.iter() {
                    let r = match (way, emulation.as_deref_mut()) {
                        (Way::Emulate { .. }, Some(e)) => e.io(*initiator, *write),
                        (Way::Target { devices }, _) => io(&devices[*initiator], *write),
                        _ => io(&lio.devices[*initiator][*lu], *write),
                    };
                    results.push(r.map_err(at)?);
                }
                log.push(format!(
                    "{:<60} {}",
                    step.text,
                    if results[0] { "succeeded" } else { "failed" }
                ));
                if results.iter().any(|r| *r != results[0]) {
                    return Err(at(format!("the LUs differ: {results:?}")));
                }
                let want = match expect {
                    Expect::Good => true,
                    Expect::Conflict => false,
                    other => {
                        return Err(at(format!(
                            "I/O steps expect good or conflict, not {other:?}"
                        )))
                    }
                };
                if results[0] != want {
                    return Err(at(format!(
                        "the {} {}",
                        if *write { "write" } else { "read" },
                        if results[0] { "succeeded" } else { "failed" }
                    )));
                }
            }
            Action::RestartHelper if target_devices(paths).is_some() => {
                return Err(at(
                    "restart-helper: against pr-target there is no helper to restart".into(),
                ));
            }
            Action::CheckPrivileges if target_devices(paths).is_some() => {
                // pr-target runs on the host; lab/target-lio.sh checks it runs as nobody.
                log.push(format!(
                    "{:<60} not applicable: no helper runs in the guest (pr-target runs on the \
                     host as nobody, checked by lab/target-lio.sh)",
                    step.text
                ));
            }
            Action::RestartHelper => {
                for h in helpers.iter_mut() {
                    h.restart().map_err(at)?;
                }
                log.push(format!("{:<60} restarted", step.text));
            }
            Action::Sleep(s) => std::thread::sleep(Duration::from_secs_f64(*s)),
            Action::CheckPrivileges => {
                let ours: Vec<&Helper> = helpers
                    .iter()
                    .filter(|h| h.kind == HelperKind::Ours)
                    .collect();
                if ours.is_empty() {
                    return Err(at("our helper is not running in this scenario".into()));
                }
                for h in ours {
                    let st = h.proc_status();
                    let field = |name: &str| {
                        st.lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                            .unwrap_or_default()
                    };
                    let got = format!(
                        "Uid {} Gid {} CapEff {} CapPrm {} CapBnd {} NoNewPrivs {} Seccomp {}",
                        field("Uid:"),
                        field("Gid:"),
                        field("CapEff:"),
                        field("CapPrm:"),
                        field("CapBnd:"),
                        field("NoNewPrivs:"),
                        field("Seccomp:")
                    );
                    log.push(format!("{:<60} {got}", step.text));
                    // CAP_SYS_RAWIO (17), and CAP_SYS_ADMIN (21) with the block-layer backend,
                    // which Linux before 6.5 requires for IOC_PR_*.
                    let caps = match sc.backend {
                        Backend::Sgio => "0000000000020000",
                        Backend::Blkpr => "0000000000220000",
                    };
                    let want = format!(
                        "Uid 65534 65534 65534 65534 Gid 65534 65534 65534 65534 \
                     CapEff {caps} CapPrm {caps} CapBnd 0000000000000000 NoNewPrivs 1 Seccomp 2"
                    );
                    if got != want {
                        return Err(at(format!("privileges are {got}, expected {want}")));
                    }
                }
            }
        }
    }
    Ok(())
}
