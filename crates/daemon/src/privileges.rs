//! Dropping privileges after the socket is listening: keep only CAP_SYS_RAWIO (for SG_IO on
//! devices) and, when the device configuration uses the block-layer PR ioctls, CAP_SYS_ADMIN
//! (Linux before 6.5 allows IOC_PR_* only with it); switch to the requested user and group, drop supplementary groups, clear the
//! bounding set, and set no_new_privs. The result is verified; any shortfall is fatal, so the
//! daemon never serves with more privilege than asked.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setgroups, setuid, Gid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{step}: {message}")]
    Step { step: &'static str, message: String },
    #[error("running as uid {uid} without privileges, so cannot switch to {what}")]
    NotRoot { uid: u32, what: String },
    #[error("verification failed: {0}")]
    Verify(String),
}

fn step<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> PrivilegeError {
    move |e| PrivilegeError::Step {
        step,
        message: e.to_string(),
    }
}

/// The capabilities the daemon keeps.
pub fn kept(sys_admin: bool) -> CapsHashSet {
    let mut set: CapsHashSet = [Capability::CAP_SYS_RAWIO].into_iter().collect();
    if sys_admin {
        set.insert(Capability::CAP_SYS_ADMIN);
    }
    set
}

pub fn drop_privileges(
    uid: Option<u32>,
    gid: Option<u32>,
    sys_admin: bool,
) -> Result<(), PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(step("reading capabilities"))?;
    let target_uid = uid.unwrap_or_else(|| getuid().as_raw());
    let target_gid = gid.unwrap_or_else(|| getgid().as_raw());

    if !permitted.contains(&Capability::CAP_SETUID) {
        // Not privileged: nothing to drop, but we cannot switch ids either.
        if target_uid != geteuid().as_raw() || target_gid != getegid().as_raw() {
            return Err(PrivilegeError::NotRoot {
                uid: geteuid().as_raw(),
                what: format!("uid {target_uid} gid {target_gid}"),
            });
        }
        tracing::warn!(
            "not started as root: running with the privileges we were given; SG_IO on devices needs CAP_SYS_RAWIO"
        );
        caps::clear(None, CapSet::Inheritable).ok();
        rustix::thread::set_no_new_privs(true).map_err(step("setting no_new_privs"))?;
        return Ok(());
    }

    // Bounding set first, while CAP_SETPCAP is still effective.
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(step("clearing the bounding set"))?;
    }
    // Keep the permitted set across setuid, then switch ids.
    nix::sys::prctl::set_keepcaps(true).map_err(step("PR_SET_KEEPCAPS"))?;
    setgroups(&[]).map_err(step("dropping supplementary groups"))?;
    setgid(Gid::from_raw(target_gid)).map_err(step("setgid"))?;
    setuid(Uid::from_raw(target_uid)).map_err(step("setuid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(step("PR_SET_KEEPCAPS"))?;

    let keep = kept(sys_admin);
    caps::clear(None, CapSet::Ambient).ok();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .map_err(step("clearing inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(step("setting effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(step("setting permitted capabilities"))?;
    rustix::thread::set_no_new_privs(true).map_err(step("setting no_new_privs"))?;

    verify(target_uid, target_gid, &keep)?;
    let mut names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    names.sort();
    tracing::info!(
        "privileges dropped: uid {target_uid} gid {target_gid}, capabilities {{{}}}",
        names.join(", ")
    );
    Ok(())
}

fn verify(uid: u32, gid: u32, keep: &CapsHashSet) -> Result<(), PrivilegeError> {
    let ids = nix::unistd::getresuid().map_err(step("getresuid"))?;
    let gids = nix::unistd::getresgid().map_err(step("getresgid"))?;
    if [ids.real, ids.effective, ids.saved]
        .iter()
        .any(|u| u.as_raw() != uid)
        || [gids.real, gids.effective, gids.saved]
            .iter()
            .any(|g| g.as_raw() != gid)
    {
        return Err(PrivilegeError::Verify(format!(
            "ids are {ids:?} / {gids:?}, expected uid {uid} gid {gid}"
        )));
    }
    let groups = nix::unistd::getgroups().map_err(step("getgroups"))?;
    if groups.iter().any(|g| g.as_raw() != gid) {
        return Err(PrivilegeError::Verify(format!(
            "supplementary groups remain: {groups:?}"
        )));
    }
    for set in [CapSet::Effective, CapSet::Permitted] {
        let have = caps::read(None, set).map_err(step("reading capabilities"))?;
        if !have.is_subset(keep) {
            return Err(PrivilegeError::Verify(format!(
                "{set:?} capabilities still hold {:?}",
                have.difference(keep)
            )));
        }
    }
    let bounding = caps::read(None, CapSet::Bounding).map_err(step("reading the bounding set"))?;
    if !bounding.is_empty() {
        return Err(PrivilegeError::Verify(format!(
            "bounding set still holds {bounding:?}"
        )));
    }
    Ok(())
}
