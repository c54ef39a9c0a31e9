//! GET_INFLIGHT_FD and SET_INFLIGHT_FD (protocol feature INFLIGHT_SHMFD),
//! which vhost-user-backend 0.24 only stubs: zcnet's interceptor answers
//! them before the handler sees them.
//!
//! GET_INFLIGHT_FD: the frontend says how many queues of which size it
//! runs; zcnet makes a memfd of the record's size for that geometry,
//! formats it, seals it against shrinking and growing (so a mapping of it
//! can never fault past its end), and hands it over with its size. The
//! frontend keeps it, across backend restarts, and gives it back with
//! SET_INFLIGHT_FD before the rings start; zcnet maps it and keeps its
//! in-flight record there instead of in its ledger.
//!
//! A request zcnet cannot honour gets an error answer and the connection
//! goes on: for GET_INFLIGHT_FD a reply with `mmap_size` 0 and no
//! descriptor (what QEMU takes for "no region"); for SET_INFLIGHT_FD an
//! error ack (or, if the frontend asked for none, the connection is closed,
//! as for every refusal, see [`crate::intercept::Verdict::Refuse`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{info, warn};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use thiserror::Error;
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};

use super::map::Mapping;
use super::record::{Geometry, Record};
use super::Session;
use crate::error_chain;
use crate::intercept::{Message, Verdict};

/// Why an inflight request cannot be honoured.
#[derive(Debug, Error)]
enum Refusal {
    #[error("INFLIGHT_SHMFD was not negotiated (SET_PROTOCOL_FEATURES)")]
    NotNegotiated,
    #[error("the body is not an inflight description with queues and a queue size")]
    Malformed,
    #[error(
        "{num_queues} queues of {queue_size} entries: the device has {rings} rings of at most \
         {max} entries (a power of two)"
    )]
    Geometry {
        num_queues: u16,
        queue_size: u16,
        rings: u16,
        max: u16,
    },
    #[error("it came with {0} file descriptors; it carries exactly one")]
    Fds(usize),
    #[error("mmap_size {got}: a region for this geometry is {want} bytes")]
    Size { got: u64, want: usize },
    #[error(
        "the descriptor is not a region zcnet handed out with GET_INFLIGHT_FD (a memfd sealed \
         against shrinking)"
    )]
    NotSealed(#[source] nix::Error),
    #[error(
        "the descriptor is not a region zcnet handed out with GET_INFLIGHT_FD (a memfd sealed \
         against shrinking); its seals are {0:#x}"
    )]
    Unsealed(i32),
    #[error("the file holds {got} bytes; the region needs {want} from offset {offset}")]
    Short { got: u64, want: usize, offset: u64 },
    #[error("cannot map it")]
    Map(#[source] io::Error),
    #[error("cannot make a region")]
    Create(#[source] io::Error),
}

impl Session {
    /// SET_PROTOCOL_FEATURES, seen on its way to the handler.
    pub fn protocol_features(&self, req: &Message) {
        if let Some(bits) = req.u64() {
            let on = bits & VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits() != 0;
            self.negotiated.store(on, Ordering::Relaxed);
        }
    }

    /// GET_INFLIGHT_FD.
    pub fn get_inflight_fd(&self, req: &Message) -> Verdict {
        let asked = req.body::<VhostUserInflight>();
        match self.make_region(asked) {
            Ok((reply, fd)) => {
                info!(
                    "GET_INFLIGHT_FD: handed the frontend a {}-byte in-flight region for {} \
                     queues of {} entries",
                    reply.mmap_size, reply.num_queues, reply.queue_size
                );
                Verdict::reply(&reply, vec![fd])
            }
            Err(e) => {
                warn!(
                    "refused GET_INFLIGHT_FD from the frontend: {}; answered with no region",
                    error_chain(&e)
                );
                let (n, q) = asked.map_or((1, 1), |a| (a.num_queues, a.queue_size));
                Verdict::reply(&VhostUserInflight::new(0, 0, n, q), Vec::new())
            }
        }
    }

    /// SET_INFLIGHT_FD.
    pub fn set_inflight_fd(&self, req: &Message) -> Verdict {
        match self.take_region(req) {
            Ok(rec) => {
                info!(
                    "SET_INFLIGHT_FD: keeping the in-flight record in the frontend's region \
                     ({:?})",
                    rec.geometry()
                );
                *self.frontend.lock().unwrap_or_else(|e| e.into_inner()) = Some(rec);
                Verdict::Done
            }
            Err(e) => Verdict::Refuse(format!("SET_INFLIGHT_FD: {}", error_chain(&e))),
        }
    }

    fn geometry(&self, body: Option<VhostUserInflight>) -> Result<Geometry, Refusal> {
        if !self.negotiated.load(Ordering::Relaxed) {
            return Err(Refusal::NotNegotiated);
        }
        let body = body.ok_or(Refusal::Malformed)?;
        let (num_queues, queue_size) = (body.num_queues, body.queue_size);
        if num_queues > self.rings
            || !queue_size.is_power_of_two()
            || queue_size > self.max_queue_size
        {
            return Err(Refusal::Geometry {
                num_queues,
                queue_size,
                rings: self.rings,
                max: self.max_queue_size,
            });
        }
        Ok(Geometry {
            num_queues,
            queue_size,
        })
    }

    fn make_region(
        &self,
        asked: Option<VhostUserInflight>,
    ) -> Result<(VhostUserInflight, OwnedFd), Refusal> {
        let g = self.geometry(asked)?;
        let fd = memfd_create(
            c"zcnet-inflight",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Refusal::Create(e.into()))?;
        let file = File::from(fd);
        file.set_len(g.len() as u64).map_err(Refusal::Create)?;
        let map = Mapping::new(&file, 0, g.len()).map_err(Refusal::Create)?;
        if let Some(rec) = Record::new(map, g, String::new()) {
            rec.format();
        }
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| Refusal::Create(e.into()))?;
        let reply = VhostUserInflight::new(g.len() as u64, 0, g.num_queues, g.queue_size);
        Ok((reply, OwnedFd::from(file)))
    }

    fn take_region(&self, req: &Message) -> Result<Arc<Record>, Refusal> {
        let g = self.geometry(req.body::<VhostUserInflight>())?;
        let [fd] = req.fds() else {
            return Err(Refusal::Fds(req.fds().len()));
        };
        // The body parsed above.
        let body = req.body::<VhostUserInflight>().ok_or(Refusal::Malformed)?;
        if body.mmap_size != g.len() as u64 {
            return Err(Refusal::Size {
                got: body.mmap_size,
                want: g.len(),
            });
        }
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).map_err(Refusal::NotSealed)?;
        if seals & SealFlag::F_SEAL_SHRINK.bits() == 0 {
            return Err(Refusal::Unsealed(seals));
        }
        let file = File::from(fd.try_clone().map_err(Refusal::Map)?);
        let got = file.metadata().map_err(Refusal::Map)?.len();
        if body
            .mmap_offset
            .checked_add(g.len() as u64)
            .is_none_or(|end| end > got)
        {
            return Err(Refusal::Short {
                got,
                want: g.len(),
                offset: body.mmap_offset,
            });
        }
        let map = Mapping::new(&file, body.mmap_offset, g.len()).map_err(Refusal::Map)?;
        let rec = Record::new(map, g, "the frontend's in-flight region".to_owned()).ok_or(
            Refusal::Size {
                got: body.mmap_size,
                want: g.len(),
            },
        )?;
        if !rec.is_formatted() {
            if !rec.is_blank() {
                warn!(
                    "SET_INFLIGHT_FD: the frontend's region does not hold a zcnet record; \
                     starting it afresh"
                );
            }
            rec.format();
        }
        Ok(Arc::new(rec))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag, VhostUserU64};
    use vm_memory::ByteValued;

    use super::super::ledger;
    use super::*;

    fn session(dir: &tempfile::TempDir) -> Session {
        let g = Geometry {
            num_queues: 4,
            queue_size: 256,
        };
        let ledger = ledger::open(&dir.path().join("zc.sock.inflight"), g).unwrap();
        let s = Session::new(ledger, 4, 256);
        let proto = VhostUserU64::new(VhostUserProtocolFeatures::INFLIGHT_SHMFD.bits());
        s.protocol_features(&msg(
            FrontendReq::SET_PROTOCOL_FEATURES,
            proto.as_slice(),
            vec![],
        ));
        s
    }

    fn msg(code: FrontendReq, body: &[u8], fds: Vec<OwnedFd>) -> Message {
        Message::new(code, VhostUserHeaderFlag::NEED_REPLY, body.to_vec(), fds)
    }

    fn get(s: &Session, nq: u16, qs: u16) -> (VhostUserInflight, Vec<OwnedFd>) {
        let asked = VhostUserInflight::new(0, 0, nq, qs);
        match s.get_inflight_fd(&msg(FrontendReq::GET_INFLIGHT_FD, asked.as_slice(), vec![])) {
            Verdict::Reply { payload, fds } => {
                let mut body = VhostUserInflight::default();
                body.as_mut_slice().copy_from_slice(&payload);
                (body, fds)
            }
            other => panic!("GET_INFLIGHT_FD answered {other:?}"),
        }
    }

    fn set(s: &Session, info: VhostUserInflight, fds: Vec<OwnedFd>) -> Verdict {
        s.set_inflight_fd(&msg(FrontendReq::SET_INFLIGHT_FD, info.as_slice(), fds))
    }

    fn refusal(v: Verdict) -> String {
        match v {
            Verdict::Refuse(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_region_handed_out_is_taken_back_and_kept_for_the_rings() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(&dir);
        let (info, mut fds) = get(&s, 2, 16);
        assert_eq!(
            (info.num_queues, info.queue_size, info.mmap_offset),
            (2, 16, 0)
        );
        let want = Geometry {
            num_queues: 2,
            queue_size: 16,
        };
        assert_eq!(info.mmap_size, want.len() as u64);
        let fd = fds.pop().expect("one descriptor");
        // Sealed: the frontend cannot shrink what zcnet maps.
        let file = File::from(fd.try_clone().unwrap());
        assert!(file.set_len(16).is_err());
        assert!(matches!(set(&s, info, vec![fd]), Verdict::Done));
        let kept = s.frontend.lock().unwrap().clone().expect("kept");
        assert_eq!(kept.geometry(), want);
        assert!(kept.is_formatted());
        // Queue 1 keeps its record there; queue 3 (past the region) in the
        // ledger.
        assert!(std::ptr::eq(
            s.record_for(1, 16).unwrap().record(),
            kept.as_ref()
        ));
        assert!(!std::ptr::eq(
            s.record_for(3, 16).unwrap().record(),
            kept.as_ref()
        ));
    }

    #[test]
    fn a_region_a_frontend_zeroed_is_formatted_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(&dir);
        let (info, mut fds) = get(&s, 2, 16);
        let fd = fds.pop().unwrap();
        let file = File::from(fd.try_clone().unwrap());
        file.write_all_at(&vec![0u8; info.mmap_size as usize], 0)
            .unwrap();
        assert!(matches!(set(&s, info, vec![fd]), Verdict::Done));
        assert!(s.frontend.lock().unwrap().as_ref().unwrap().is_formatted());
    }

    #[test]
    fn malformed_and_hostile_requests_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(&dir);
        let (info, mut fds) = get(&s, 2, 16);
        let fd = fds.pop().unwrap();
        let dup = || fd.try_clone().unwrap();

        let why = refusal(set(&s, info, vec![]));
        assert!(why.contains("0 file descriptors"), "{why}");
        let why = refusal(set(&s, info, vec![dup(), dup()]));
        assert!(why.contains("2 file descriptors"), "{why}");
        let mut wrong = info;
        wrong.mmap_size -= 64;
        let why = refusal(set(&s, wrong, vec![dup()]));
        assert!(why.contains("mmap_size"), "{why}");
        let mut wrong = info;
        wrong.mmap_offset = 4096;
        let why = refusal(set(&s, wrong, vec![dup()]));
        assert!(why.contains("needs"), "{why}");
        for (nq, qs) in [(5, 16), (2, 100), (2, 512)] {
            let why = refusal(set(
                &s,
                VhostUserInflight::new(1 << 20, 0, nq, qs),
                vec![dup()],
            ));
            assert!(why.contains("the device has 4 rings"), "{why}");
        }
        // A file zcnet did not hand out (not sealed against shrinking).
        let plain = tempfile::tempfile().unwrap();
        plain.set_len(info.mmap_size).unwrap();
        let why = refusal(set(&s, info, vec![OwnedFd::from(plain)]));
        assert!(why.contains("not a region zcnet handed out"), "{why}");
        // A body of the wrong size.
        let short = msg(FrontendReq::SET_INFLIGHT_FD, &[0u8; 8], vec![dup()]);
        let why = refusal(s.set_inflight_fd(&short));
        assert!(why.contains("not an inflight description"), "{why}");
        assert!(
            s.frontend.lock().unwrap().is_none(),
            "nothing refused was kept"
        );

        // GET for a geometry the device cannot have: no region.
        let (none, fds) = get(&s, 9, 16);
        assert_eq!(none.mmap_size, 0);
        assert!(fds.is_empty());
    }

    #[test]
    fn without_inflight_shmfd_negotiated_neither_request_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(&dir);
        let (info, mut fds) = get(&s, 2, 16);
        let off = VhostUserU64::new(VhostUserProtocolFeatures::MQ.bits());
        s.protocol_features(&msg(
            FrontendReq::SET_PROTOCOL_FEATURES,
            off.as_slice(),
            vec![],
        ));
        let why = refusal(set(&s, info, vec![fds.pop().unwrap()]));
        assert!(why.contains("not negotiated"), "{why}");
        let (none, fds) = get(&s, 2, 16);
        assert_eq!(none.mmap_size, 0);
        assert!(fds.is_empty());
    }
}
