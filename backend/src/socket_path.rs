//! The vhost-user socket's path: taking it without stealing it from a
//! live daemon, and giving it back only if it is still ours.
//!
//! - **A live listener** on the path (a connection to it succeeds) means
//!   another zcnet, or another program, serves there: zcnet refuses to
//!   start, before it touches the tap. Taking the path over would leave
//!   that daemon running but unreachable, and deleting it at exit would
//!   then cut off both.
//! - **A stale socket file** (connecting is refused: its daemon died) is
//!   replaced. So is nothing at all.
//! - **Anything else** on the path (a regular file, a directory) is an
//!   operator's mistake: refused, never deleted.
//! - **At exit** the file is removed only if it is still the one zcnet
//!   bound: same device and inode as recorded right after `bind`. If an
//!   operator removed it and another daemon bound the path since, that
//!   daemon's socket stays.
//!
//! The probe connection reaches the live daemon, which takes it for a
//! frontend that left at once. Two zcnets started at the same instant on
//! the same stale path can still race between the probe and `bind`; the
//! loser's `bind` fails and it exits, unless the winner had not yet bound
//! when the loser removed the stale file, which is the one case left.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use log::{info, warn};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SocketPathError {
    #[error(
        "{0}: a daemon is already listening on this socket (another zcnet?); stop it first, \
         or give this zcnet another --socket-path"
    )]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it, or give another --socket-path")]
    NotASocket(PathBuf),
    #[error("cannot tell whether a daemon listens on {path}")]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What is at the path now.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Nothing,
    /// A socket file nobody listens on.
    Stale,
    Live,
}

fn probe(path: &Path) -> Result<Found, SocketPathError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(source) => {
            return Err(SocketPathError::Probe {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketPathError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Ok(Found::Live),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(Found::Stale),
        // A full backlog: someone listens.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(Found::Live),
        // Gone between the two looks.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(source) => Err(SocketPathError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Refuses a path a live daemon listens on (or that is not a socket).
/// Call it before opening anything another daemon may be using.
pub fn check_free(path: &Path) -> Result<(), SocketPathError> {
    match probe(path)? {
        Found::Live => Err(SocketPathError::InUse(path.to_owned())),
        Found::Nothing | Found::Stale => Ok(()),
    }
}

/// The socket file zcnet bound: its path and its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    path: PathBuf,
    id: FileId,
}

/// Which file is at a path. Device and inode alone are not enough: a
/// file system may give a new file the inode number of one just removed
/// (ext4 does, at once), which is exactly what happens when an operator
/// removes the path and another daemon binds it. So the file's birth
/// time goes with them, or, where the file system keeps none, its change
/// time (recorded after zcnet's own `chown`; a later `chmod` by someone
/// else makes zcnet leave the file, the safe way to be wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    born: Option<SystemTime>,
    changed: (i64, i64),
}

impl FileId {
    fn of(path: &Path) -> io::Result<FileId> {
        let m = std::fs::symlink_metadata(path)?;
        if !m.file_type().is_socket() {
            return Err(io::Error::other("not a socket"));
        }
        let born = m.created().ok();
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
            born,
            changed: if born.is_some() {
                (0, 0)
            } else {
                (m.ctime(), m.ctime_nsec())
            },
        })
    }
}

impl Claim {
    /// Records which file is at `path` now: call it right after [`bind`]
    /// (and after changing the file's owner, if zcnet does).
    pub fn record(path: &Path) -> Result<Claim, SocketPathError> {
        let id = FileId::of(path).map_err(|source| SocketPathError::Bind {
            path: path.to_owned(),
            source,
        })?;
        Ok(Claim {
            path: path.to_owned(),
            id,
        })
    }

    /// Whether the file at the path is still the one zcnet bound.
    pub fn is_ours(&self) -> bool {
        FileId::of(&self.path).is_ok_and(|id| id == self.id)
    }

    /// Removes the socket file if it is still ours; says what it did.
    pub fn release(&self) {
        if !self.is_ours() {
            warn!(
                "{} is no longer the socket this zcnet bound (removed or replaced since); \
                 leaving it alone",
                self.path.display()
            );
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => info!("removed {}", self.path.display()),
            Err(e) => warn!("cannot remove {}: {e}", self.path.display()),
        }
    }
}

/// Listens on `path`: refuses a live listener, replaces a stale socket.
pub fn bind(path: &Path) -> Result<UnixListener, SocketPathError> {
    let mut replaced = false;
    let listener = loop {
        match UnixListener::bind(path) {
            Ok(l) => break l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && !replaced => {
                match probe(path)? {
                    Found::Live => return Err(SocketPathError::InUse(path.to_owned())),
                    Found::Stale => {
                        info!(
                            "{} is a stale socket (nobody listens on it); replacing it",
                            path.display()
                        );
                        match std::fs::remove_file(path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(source) => {
                                return Err(SocketPathError::RemoveStale {
                                    path: path.to_owned(),
                                    source,
                                })
                            }
                        }
                    }
                    Found::Nothing => {}
                }
                replaced = true;
            }
            Err(source) => {
                return Err(SocketPathError::Bind {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    };
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_listener_is_refused_a_stale_socket_replaced_and_only_ours_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let first = bind(&path).unwrap();
        let claim = Claim::record(&path).unwrap();
        assert!(claim.is_ours());
        let err = bind(&path).unwrap_err();
        assert!(matches!(err, SocketPathError::InUse(_)), "{err}");
        assert!(check_free(&path).is_err());
        drop(first); // the daemon died: its file stays, stale
        assert!(path.exists());
        check_free(&path).unwrap();
        let _second = bind(&path).unwrap();
        let claim2 = Claim::record(&path).unwrap();
        assert!(!claim.is_ours(), "the old claim is not the new file");
        claim.release();
        assert!(path.exists(), "released a socket that is not ours");
        claim2.release();
        assert!(!path.exists());
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"keep me").unwrap();
        assert!(matches!(
            bind(&path).unwrap_err(),
            SocketPathError::NotASocket(_)
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }
}
