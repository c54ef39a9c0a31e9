//! zcnet's own in-flight record, for frontends that keep none
//! (INFLIGHT_SHMFD not negotiated: QEMU's net device): a file under the
//! runtime directory, mapped shared, so every store reaches the page cache
//! at once and a killed zcnet's successor finds it. It is kept across
//! restarts; a ledger written for another queue count or size is started
//! afresh.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::info;
use thiserror::Error;

use super::map::Mapping;
use super::record::{Geometry, Record};

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("cannot open the in-flight ledger {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot size the in-flight ledger {path} to {len} bytes")]
    Size {
        path: PathBuf,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot map the in-flight ledger {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Opens (or creates) the ledger at `path` for `geometry`.
pub fn open(path: &Path, geometry: Geometry) -> Result<Arc<Record>, LedgerError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| LedgerError::Open {
            path: path.to_owned(),
            source,
        })?;
    let len = geometry.len();
    let found = file
        .metadata()
        .map_err(|source| LedgerError::Open {
            path: path.to_owned(),
            source,
        })?
        .len();
    let what = format!("the in-flight ledger {}", path.display());
    if found == len as u64 {
        let rec = map(&file, path, geometry, &what)?;
        if rec.is_formatted() {
            info!("{what}: kept from an earlier run ({geometry:?})");
            return Ok(rec);
        }
    }
    if found != 0 {
        info!(
            "{what} does not hold a record of {} queues of {} entries ({found} bytes, {len} for \
             one): starting it afresh",
            geometry.num_queues, geometry.queue_size
        );
    }
    // Truncating first zeroes whatever was there.
    let sized = file.set_len(0).and_then(|()| file.set_len(len as u64));
    sized.map_err(|source| LedgerError::Size {
        path: path.to_owned(),
        len,
        source,
    })?;
    let rec = map(&file, path, geometry, &what)?;
    rec.format();
    info!("{what}: new ({geometry:?})");
    Ok(rec)
}

/// A record for `geometry` that no file keeps: memory of a memfd, for
/// in-process tests and fuzzing, where no restart is to be survived.
pub fn in_memory(geometry: Geometry) -> io::Result<Arc<Record>> {
    let fd = nix::sys::memfd::memfd_create(
        c"zcnet-inflight-scratch",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    let file = File::from(fd);
    file.set_len(geometry.len() as u64)?;
    let rec = map(
        &file,
        Path::new("(memory)"),
        geometry,
        "an in-memory in-flight record",
    )
    .map_err(io::Error::other)?;
    rec.format();
    Ok(rec)
}

fn map(
    file: &File,
    path: &Path,
    geometry: Geometry,
    what: &str,
) -> Result<Arc<Record>, LedgerError> {
    let map = Mapping::new(file, 0, geometry.len()).map_err(|source| LedgerError::Map {
        path: path.to_owned(),
        source,
    })?;
    // The mapping is exactly the geometry's length.
    let rec = Record::new(map, geometry, what.to_owned()).ok_or_else(|| LedgerError::Map {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "an empty geometry"),
    })?;
    Ok(Arc::new(rec))
}

#[cfg(test)]
mod tests {
    use super::super::record::{QueueRecord, RingId};
    use super::*;

    #[test]
    fn a_ledger_survives_its_process_and_another_geometry_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zc.sock.inflight");
        let g = Geometry {
            num_queues: 2,
            queue_size: 64,
        };
        let rec = open(&path, g).unwrap();
        let q = QueueRecord::new(rec.clone(), 1, 16).unwrap();
        q.begin(RingId::default(), 5);
        q.mark(3, 0);
        drop((q, rec));

        let rec = open(&path, g).unwrap();
        let s = QueueRecord::new(rec, 1, 16).unwrap().snapshot();
        assert!(s.running && s.descs[3].inflight && s.used_idx == 5);

        let other = Geometry {
            num_queues: 4,
            queue_size: 64,
        };
        let rec = open(&path, other).unwrap();
        let s = QueueRecord::new(rec, 1, 16).unwrap().snapshot();
        assert!(!s.running && s.descs.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), other.len() as u64);
    }
}
