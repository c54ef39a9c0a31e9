//! Giving up root (`--user NAME`).
//!
//! Started as root, zcnet opens everything privileged first: the tap
//! (creating it if need be), the vhost-user listener and the metrics
//! listener, all on the main thread. Then, before it starts any other
//! thread, it becomes `NAME`: its supplementary groups, then its group,
//! then its user (real, effective and saved ids), which clears the
//! permitted and effective capability sets; the bounding set is emptied
//! before that (while zcnet still may), the inheritable set after, and
//! `PR_SET_NO_NEW_PRIVS` is set, so no exec can give anything back. Every
//! later thread inherits all of that (the bounding set and
//! no-new-privs are per thread, which is why nothing runs on another
//! thread yet). It then checks `/proc/self/status`: every capability set
//! empty.
//!
//! What serving needs afterwards is unprivileged: accepting a frontend on
//! the listener that is already open, mapping the memory it sends,
//! eventfds, reading and writing the open tap fds (`TUNSETOFFLOAD` on an
//! attached queue needs no capability), reconnecting a TCP stream. The
//! socket file is given to `NAME` so it can remove it at exit (that also
//! needs write access to its directory).

use std::ffi::CString;
use std::io;
use std::path::Path;

use log::info;
use nix::unistd::{getgrouplist, setgroups, setresgid, setresuid, Gid, Uid, User};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("--user {0:?}: no such user; give the name of an existing user (see /etc/passwd)")]
    NoSuchUser(String),
    #[error("--user {name:?}: cannot look the user up")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "--user {0:?}: zcnet runs as uid {1}, not root, so it cannot change user; start it as \
         root, or drop --user and run it as that user (with a tap made for it: ip tuntap add dev \
         NAME mode tap multi_queue vnet_hdr user USER)"
    )]
    NotRoot(String, u32),
    #[error("--user {0:?} is root; name an unprivileged user")]
    IsRoot(String),
    #[error("cannot give the socket {path} to --user {name:?}")]
    Chown {
        path: String,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot become --user {name:?} ({step})")]
    Switch {
        name: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("after becoming --user {name:?}, {what}")]
    Kept { name: String, what: String },
}

/// The user to become, looked up while zcnet still can read anything.
#[derive(Clone, Debug)]
pub struct Target {
    name: String,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Looks `name` up; refuses unless zcnet runs as root and `name` is not.
/// Call it first thing, so a wrong name costs nothing.
pub fn lookup(name: &str) -> Result<Target, PrivilegeError> {
    let euid = Uid::effective();
    if !euid.is_root() {
        return Err(PrivilegeError::NotRoot(name.to_owned(), euid.as_raw()));
    }
    let user = User::from_name(name)
        .map_err(|source| PrivilegeError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_owned()))?;
    if user.uid.is_root() {
        return Err(PrivilegeError::IsRoot(name.to_owned()));
    }
    let cname = CString::new(name).map_err(|_| PrivilegeError::NoSuchUser(name.to_owned()))?;
    let groups = getgrouplist(&cname, user.gid).map_err(|source| PrivilegeError::Lookup {
        name: name.to_owned(),
        source,
    })?;
    Ok(Target {
        name: name.to_owned(),
        uid: user.uid,
        gid: user.gid,
        groups,
    })
}

impl Target {
    /// Gives the socket file at `path` to the user and its group.
    pub fn chown(&self, path: &Path) -> Result<(), PrivilegeError> {
        std::os::unix::fs::chown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw())).map_err(
            |source| PrivilegeError::Chown {
                path: path.display().to_string(),
                name: self.name.clone(),
                source,
            },
        )
    }

    /// Becomes the user for good, keeping no capability. Call it on the
    /// main thread before any other thread exists.
    pub fn switch(&self) -> Result<(), PrivilegeError> {
        let step = |step: &'static str| {
            let name = self.name.clone();
            move |source: io::Error| PrivilegeError::Switch { name, step, source }
        };
        drop_bounding_set().map_err(step("PR_CAPBSET_DROP"))?;
        setgroups(&self.groups)
            .map_err(io::Error::from)
            .map_err(step("setgroups"))?;
        setresgid(self.gid, self.gid, self.gid)
            .map_err(io::Error::from)
            .map_err(step("setresgid"))?;
        setresuid(self.uid, self.uid, self.uid)
            .map_err(io::Error::from)
            .map_err(step("setresuid"))?;
        clear_capabilities().map_err(step("capset"))?;
        nix::sys::prctl::set_no_new_privs()
            .map_err(io::Error::from)
            .map_err(step("PR_SET_NO_NEW_PRIVS"))?;
        self.check()?;
        info!(
            "now running as {} (uid {}, gid {}), with no capabilities",
            self.name, self.uid, self.gid
        );
        Ok(())
    }

    /// Reads back what the kernel says: no capability in any set, the
    /// user's ids, no way back to root.
    fn check(&self) -> Result<(), PrivilegeError> {
        let kept = |what: String| PrivilegeError::Kept {
            name: self.name.clone(),
            what,
        };
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| kept(format!("/proc/self/status cannot be read: {e}")))?;
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(set).and_then(|v| v.strip_prefix(':')))
                .map(str::trim);
            match value {
                Some(v) if v.bytes().all(|b| b == b'0') => {}
                // Kernels without ambient capabilities have no CapAmb.
                None if set == "CapAmb" => {}
                other => return Err(kept(format!("{set} is {other:?}, not empty"))),
            }
        }
        if Uid::current() != self.uid || Uid::effective() != self.uid {
            return Err(kept("the user ids did not change".to_owned()));
        }
        if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
            return Err(kept("it can become root again".to_owned()));
        }
        Ok(())
    }
}

/// Empties the calling thread's capability bounding set.
fn drop_bounding_set() -> io::Result<()> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    for cap in 0..=last {
        // SAFETY: PR_CAPBSET_DROP takes two integer arguments and no
        // pointer; the result is checked.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the calling thread's effective, permitted and inheritable sets
/// empty (after the uid change only the inheritable one still holds
/// anything, and lowering needs no capability).
fn clear_capabilities() -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // Version 3 takes two data structs (capabilities 0-31 and 32-63).
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and, for version 3, two data
    // structs, both repr(C) as the kernel defines them, living on this
    // stack for the call; pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
