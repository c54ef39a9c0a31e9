//! Checks on hostile or broken frontend requests that vhost-user-backend's
//! handler either lets through or answers only by dropping the connection
//! (run by [`crate::net_intercept`] before its own arms). A refusal says
//! what is wrong; the relay answers it with an error when the frontend
//! asked for a reply (REPLY_ACK and NEED_REPLY) and keeps the connection,
//! and closes it otherwise. A request whose reply carries data
//! (GET_VRING_BASE, GET_FEATURES, ...) cannot be answered with an error
//! ack, which the frontend would read as data: such a request is refused
//! by closing the connection, with the reason logged.
//!
//! - **Sizes**: every request with a fixed body must carry exactly that
//!   many bytes (SET_MEM_TABLE: its header and as many regions as it
//!   says). The handler drops the connection without a word.
//! - **Descriptors where none belong**: only SET_MEM_TABLE (one per
//!   region), ADD_MEM_REG (one), SET_VRING_KICK/CALL/ERR (one, unless bit 8
//!   says none), REM_MEM_REG (one tolerated, per the spec), and requests
//!   zcnet does not check here may carry descriptors. The relay closes
//!   the refused request's descriptors.
//! - **Ring indices** of SET_VRING_BASE, SET_VRING_ADDR, GET_VRING_BASE and
//!   SET_VRING_KICK/CALL/ERR (SET_VRING_NUM and SET_VRING_ENABLE: in
//!   `net_intercept`). For KICK/CALL/ERR the handler reads the index from
//!   the low 8 bits only, so 0x201 would reach ring 1: any bit set above
//!   bit 8 is refused.
//! - **Memory regions** (SET_MEM_TABLE, ADD_MEM_REG): none of size 0,
//!   none overlapping another, at most 8 in a table and 509 in all (what
//!   GET_MAX_MEM_SLOTS answers; the handler does not enforce it), and each
//!   within its file: vm-memory maps whatever size the frontend says, and
//!   touching a page past the end of a memfd kills the daemon with SIGBUS.
//!   (A frontend that shrinks the file afterwards can still do that; the
//!   spec trusts the frontend with its own memory.)
//! - **Ring addresses** (SET_VRING_ADDR): the descriptor table, avail ring
//!   and used ring, at the ring's size, each wholly inside one region of
//!   the memory table, aligned as virtio requires. The handler checks only
//!   that each starts inside a region; the datapath would then read and
//!   write past it.
//! - **Memory the rings use** (REM_MEM_REG, and a SET_MEM_TABLE that
//!   replaces the table): a ring that has an address and was not stopped
//!   by GET_VRING_BASE must stay inside the memory; otherwise the request
//!   is refused. The handler would unmap the ring under the running
//!   datapath. (QEMU and cloud-hypervisor keep guest RAM, where rings
//!   live, mapped for the guest's life.)
//!
//! What the checks know of the connection (the memory table, each ring's
//! size, address and whether it runs) comes from requests the interceptor
//! forwarded; the handler ends the connection on any request it refuses,
//! so the two never disagree for long.

use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserMemory, VhostUserMemoryRegion, VhostUserSingleMemoryRegion, VhostUserU64,
    VhostUserVringAddr, VhostUserVringState,
};

use crate::intercept::{Message, Verdict};

/// The most regions in all (vhost-user-backend's GET_MAX_MEM_SLOTS).
pub const MAX_MEM_SLOTS: usize = 509;
/// The most regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS).
const MAX_TABLE_REGIONS: usize = 8;
/// KICK/CALL/ERR: bits 0-7 the ring, bit 8 "no descriptor".
const VRING_INDEX_MASK: u64 = 0xff;
const VRING_NOFD: u64 = 0x100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    gpa: u64,
    size: u64,
    user: u64,
}

impl Region {
    /// The guest address of frontend address `va..va + len`, if all of it
    /// lies in this region.
    fn translate(&self, va: u64, len: u64) -> Option<u64> {
        let off = va.checked_sub(self.user)?;
        (off.checked_add(len)? <= self.size).then(|| self.gpa + off)
    }

    fn holds_gpa(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa
            && gpa
                .checked_add(len)
                .is_some_and(|e| e <= self.gpa + self.size)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Ring {
    /// SET_VRING_NUM; `None` until then (the handler starts at the maximum).
    size: Option<u32>,
    /// The three areas as guest addresses and lengths, once addressed.
    areas: Option<[(u64, u64); 3]>,
    /// Addressed and not stopped since by GET_VRING_BASE.
    live: bool,
}

#[derive(Debug, Default)]
struct State {
    regions: Vec<Region>,
    rings: Vec<Ring>,
}

/// The checks for one connection.
pub struct RequestChecks {
    max_size: u32,
    rings: usize,
    state: Mutex<State>,
}

/// Whether the reply to `req` carries data, not just REPLY_ACK's u64.
fn data_reply(req: FrontendReq) -> bool {
    matches!(
        req,
        FrontendReq::GET_FEATURES
            | FrontendReq::GET_PROTOCOL_FEATURES
            | FrontendReq::GET_QUEUE_NUM
            | FrontendReq::GET_VRING_BASE
            | FrontendReq::GET_MAX_MEM_SLOTS
            | FrontendReq::GET_CONFIG
            | FrontendReq::GET_INFLIGHT_FD
            | FrontendReq::GET_SHARED_OBJECT
            | FrontendReq::GET_SHMEM_CONFIG
            | FrontendReq::POSTCOPY_ADVISE
            | FrontendReq::SET_LOG_BASE
    )
}

/// The body size of a request whose body has one, fixed size.
fn fixed_size(req: FrontendReq) -> Option<usize> {
    use FrontendReq::*;
    Some(match req {
        GET_FEATURES
        | SET_OWNER
        | RESET_OWNER
        | GET_PROTOCOL_FEATURES
        | GET_QUEUE_NUM
        | GET_MAX_MEM_SLOTS
        | RESET_DEVICE => 0,
        SET_FEATURES | SET_PROTOCOL_FEATURES | SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            size_of::<VhostUserU64>()
        }
        SET_VRING_NUM | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
            size_of::<VhostUserVringState>()
        }
        SET_VRING_ADDR => size_of::<VhostUserVringAddr>(),
        ADD_MEM_REG | REM_MEM_REG => size_of::<VhostUserSingleMemoryRegion>(),
        _ => return None,
    })
}

/// How many descriptors `req` may carry, if zcnet checks it here.
fn fds_allowed(req: FrontendReq, payload: &[u8]) -> Option<std::ops::RangeInclusive<usize>> {
    use FrontendReq::*;
    Some(match req {
        SET_MEM_TABLE => {
            let n = u32_at(payload, 0).unwrap_or(0) as usize;
            n..=n
        }
        ADD_MEM_REG => 1..=1,
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            let nofd = u64_at(payload, 0).unwrap_or(0) & VRING_NOFD != 0;
            if nofd {
                0..=0
            } else {
                1..=1
            }
        }
        REM_MEM_REG => 0..=1,
        // Requests that take descriptors, checked by the handler or by
        // whoever handles them.
        SET_LOG_BASE | SET_LOG_FD | SET_BACKEND_REQ_FD | SET_INFLIGHT_FD | SET_DEVICE_STATE_FD
        | GPU_SET_SOCKET => return None,
        _ => 0..=0,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The region at byte `at` of a payload (`VhostUserMemoryRegion`), and
/// its mmap offset.
fn region_at(b: &[u8], at: usize) -> Option<(Region, u64)> {
    Some((
        Region {
            gpa: u64_at(b, at)?,
            size: u64_at(b, at + 8)?,
            user: u64_at(b, at + 16)?,
        },
        u64_at(b, at + 24)?,
    ))
}

/// Whether `fd`, mapped at `offset` for `size` bytes, lies within its
/// file. Only regular files (memfds, hugetlbfs and tmpfs files) have a
/// size to check against.
fn within_file(fd: &OwnedFd, offset: u64, size: u64) -> Result<(), String> {
    let file = File::from(fd.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?);
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat its file: {e}"))?;
    if !meta.file_type().is_file() {
        return Ok(());
    }
    match offset.checked_add(size) {
        Some(end) if end <= meta.len() => Ok(()),
        _ => Err(format!(
            "it maps bytes {offset:#x}..{offset:#x}+{size:#x} of a file of {:#x} bytes; touching \
             a page past the end would kill the daemon (SIGBUS)",
            meta.len()
        )),
    }
}

impl RequestChecks {
    pub fn new(queue_pairs: usize, max_queue_size: u16) -> RequestChecks {
        RequestChecks {
            max_size: u32::from(max_queue_size),
            rings: 2 * queue_pairs,
            state: Mutex::new(State {
                regions: Vec::new(),
                rings: vec![Ring::default(); 2 * queue_pairs],
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is only ever replaced whole; a panic cannot leave it
        // half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The refusal of `req`, if it is refused.
    pub fn refusal(&self, req: &Message) -> Option<Verdict> {
        let code = req.request()?;
        let why = self.check(code, req)?;
        Some(if data_reply(code) {
            Verdict::Close(why)
        } else {
            Verdict::Refuse(why)
        })
    }

    fn check(&self, code: FrontendReq, req: &Message) -> Option<String> {
        let p = req.payload();
        if let Some(want) = fixed_size(code) {
            if p.len() != want {
                return Some(format!(
                    "its body is {} bytes; {code:?} has a {want}-byte body",
                    p.len()
                ));
            }
        }
        if code == FrontendReq::SET_MEM_TABLE {
            // Before the descriptors, which it counts.
            let n = u32_at(p, 0)? as usize;
            if n == 0 || n > MAX_TABLE_REGIONS {
                return Some(format!(
                    "{n} regions; a memory table has 1 to {MAX_TABLE_REGIONS} (more through \
                     ADD_MEM_REG)"
                ));
            }
        }
        if let Some(allowed) = fds_allowed(code, p) {
            let n = req.fds().len();
            if !allowed.contains(&n) {
                let what = match (allowed.start(), allowed.end()) {
                    (0, 0) => "none".to_owned(),
                    (a, b) if a == b => a.to_string(),
                    (a, b) => format!("{a} to {b}"),
                };
                return Some(format!(
                    "it carries {n} file descriptor(s); {code:?} here takes {what}"
                ));
            }
        }
        match code {
            FrontendReq::SET_VRING_BASE | FrontendReq::GET_VRING_BASE => {
                self.bad_index(u64::from(u32_at(p, 0)?))
            }
            FrontendReq::SET_VRING_KICK
            | FrontendReq::SET_VRING_CALL
            | FrontendReq::SET_VRING_ERR => {
                let v = u64_at(p, 0)?;
                if v & !(VRING_INDEX_MASK | VRING_NOFD) != 0 {
                    return Some(format!(
                        "value {v:#x}: only bits 0-7 (the ring) and 8 (no descriptor) mean \
                         anything; the handler would read ring {}",
                        v & VRING_INDEX_MASK
                    ));
                }
                self.bad_index(v & VRING_INDEX_MASK)
            }
            FrontendReq::SET_VRING_ADDR => self.check_vring_addr(p),
            FrontendReq::SET_MEM_TABLE => self.check_mem_table(p, req.fds()),
            FrontendReq::ADD_MEM_REG => self.check_add_mem_reg(p, req.fds()),
            FrontendReq::REM_MEM_REG => self.check_rem_mem_reg(p),
            _ => None,
        }
    }

    fn bad_index(&self, index: u64) -> Option<String> {
        let rings = self.rings as u64;
        (index >= rings).then(|| {
            format!(
                "ring {index}: the device has rings 0 to {} ({} queue pairs); start zcnet with \
                 more --queue-pairs or give the frontend fewer queues",
                rings - 1,
                rings / 2
            )
        })
    }

    /// The guest addresses of a ring's three areas at `size` entries, if
    /// each lies wholly inside one region; or what is wrong.
    fn ring_areas(
        regions: &[Region],
        index: u32,
        size: u32,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<[(u64, u64); 3], String> {
        let n = u64::from(size);
        let areas = [
            ("descriptor table", desc, 16 * n, 16),
            ("avail ring", avail, 6 + 2 * n, 2),
            ("used ring", used, 6 + 8 * n, 4),
        ];
        let mut out = [(0, 0); 3];
        for (i, (name, va, len, align)) in areas.into_iter().enumerate() {
            if va % align != 0 {
                return Err(format!(
                    "ring {index}'s {name} at {va:#x} is not {align}-byte aligned"
                ));
            }
            // The handler translates by the first region holding the start.
            let Some(r) = regions
                .iter()
                .find(|r| va >= r.user && va - r.user < r.size)
            else {
                return Err(format!(
                    "ring {index}'s {name} at {va:#x} is outside the guest memory the frontend \
                     sent (SET_MEM_TABLE or ADD_MEM_REG first)"
                ));
            };
            let Some(gpa) = r.translate(va, len) else {
                return Err(format!(
                    "ring {index}'s {name} ({len} bytes for {size} entries at {va:#x}) runs past \
                     the end of its memory region ({:#x}+{:#x})",
                    r.user, r.size
                ));
            };
            out[i] = (gpa, len);
        }
        Ok(out)
    }

    fn check_vring_addr(&self, p: &[u8]) -> Option<String> {
        let index = u32_at(p, 0)?;
        if let Some(why) = self.bad_index(u64::from(index)) {
            return Some(why);
        }
        let (desc, used, avail) = (u64_at(p, 8)?, u64_at(p, 16)?, u64_at(p, 24)?);
        let st = self.state();
        let size = st.rings[index as usize].size.unwrap_or(self.max_size);
        Self::ring_areas(&st.regions, index, size, desc, avail, used).err()
    }

    /// Checks `new` regions (each with its mmap offset and descriptor)
    /// against each other and against `existing`.
    fn check_regions(existing: &[Region], new: &[(Region, u64, &OwnedFd)]) -> Option<String> {
        for (i, (r, offset, fd)) in new.iter().enumerate() {
            if r.size == 0 {
                return Some(format!("region at guest address {:#x} has size 0", r.gpa));
            }
            if r.gpa.checked_add(r.size).is_none() || r.user.checked_add(r.size).is_none() {
                return Some(format!(
                    "region {:#x}+{:#x} wraps around the address space",
                    r.gpa, r.size
                ));
            }
            let others = existing.iter().chain(new[..i].iter().map(|(o, _, _)| o));
            for o in others {
                if r.gpa < o.gpa + o.size && o.gpa < r.gpa + r.size {
                    return Some(format!(
                        "region {:#x}+{:#x} overlaps region {:#x}+{:#x} in guest memory",
                        r.gpa, r.size, o.gpa, o.size
                    ));
                }
            }
            if let Err(why) = within_file(fd, *offset, r.size) {
                return Some(format!("region {:#x}+{:#x}: {why}", r.gpa, r.size));
            }
        }
        None
    }

    /// What a ring that is running would lose in `regions`, if anything.
    fn rings_outside(st: &State, regions: &[Region]) -> Option<String> {
        for (i, ring) in st.rings.iter().enumerate() {
            let (Some(areas), true) = (ring.areas, ring.live) else {
                continue;
            };
            for (gpa, len) in areas {
                if !regions.iter().any(|r| r.holds_gpa(gpa, len)) {
                    return Some(format!(
                        "ring {i} runs in guest memory at {gpa:#x}+{len:#x}, which this would \
                         unmap; stop the ring first (GET_VRING_BASE)"
                    ));
                }
            }
        }
        None
    }

    fn check_mem_table(&self, p: &[u8], fds: &[OwnedFd]) -> Option<String> {
        let n = u32_at(p, 0)? as usize;
        let head = size_of::<VhostUserMemory>();
        let each = size_of::<VhostUserMemoryRegion>();
        if p.len() != head + n * each {
            return Some(format!(
                "its body is {} bytes; a table of {n} regions is {}",
                p.len(),
                head + n * each
            ));
        }
        let new: Vec<(Region, u64, &OwnedFd)> = (0..n)
            .filter_map(|i| region_at(p, head + i * each))
            .zip(fds)
            .map(|((r, off), fd)| (r, off, fd))
            .collect();
        if let Some(why) = Self::check_regions(&[], &new) {
            return Some(why);
        }
        let regions: Vec<Region> = new.iter().map(|(r, _, _)| *r).collect();
        Self::rings_outside(&self.state(), &regions)
    }

    fn check_add_mem_reg(&self, p: &[u8], fds: &[OwnedFd]) -> Option<String> {
        let (r, offset) = region_at(p, 8)?;
        let st = self.state();
        if st.regions.len() >= MAX_MEM_SLOTS {
            return Some(format!(
                "{} regions already, the most there can be (GET_MAX_MEM_SLOTS answered \
                 {MAX_MEM_SLOTS})",
                st.regions.len()
            ));
        }
        Self::check_regions(&st.regions, &[(r, offset, fds.first()?)])
    }

    fn check_rem_mem_reg(&self, p: &[u8]) -> Option<String> {
        let (r, _) = region_at(p, 8)?;
        let st = self.state();
        if !st
            .regions
            .iter()
            .any(|o| o.gpa == r.gpa && o.size == r.size)
        {
            return Some(format!(
                "there is no region {:#x}+{:#x} to remove",
                r.gpa, r.size
            ));
        }
        let rest: Vec<Region> = st
            .regions
            .iter()
            .copied()
            .filter(|o| !(o.gpa == r.gpa && o.size == r.size))
            .collect();
        Self::rings_outside(&st, &rest)
    }

    /// Learns from a request that goes on to the handler.
    pub fn forwarded(&self, req: &Message) {
        let Some(code) = req.request() else {
            return;
        };
        let p = req.payload();
        let mut st = self.state();
        match code {
            FrontendReq::SET_MEM_TABLE => {
                let n = u32_at(p, 0).unwrap_or(0) as usize;
                let head = size_of::<VhostUserMemory>();
                let each = size_of::<VhostUserMemoryRegion>();
                st.regions = (0..n)
                    .filter_map(|i| region_at(p, head + i * each).map(|(r, _)| r))
                    .collect();
            }
            FrontendReq::ADD_MEM_REG => {
                if let Some((r, _)) = region_at(p, 8) {
                    st.regions.push(r);
                }
            }
            FrontendReq::REM_MEM_REG => {
                if let Some((r, _)) = region_at(p, 8) {
                    st.regions.retain(|o| !(o.gpa == r.gpa && o.size == r.size));
                }
            }
            FrontendReq::SET_VRING_NUM => {
                if let (Some(i), Some(num)) = (u32_at(p, 0), u32_at(p, 4)) {
                    if let Some(ring) = st.rings.get_mut(i as usize) {
                        ring.size = Some(num);
                    }
                }
            }
            FrontendReq::SET_VRING_ADDR => {
                let (Some(i), Some(desc), Some(used), Some(avail)) =
                    (u32_at(p, 0), u64_at(p, 8), u64_at(p, 16), u64_at(p, 24))
                else {
                    return;
                };
                let size = st
                    .rings
                    .get(i as usize)
                    .and_then(|r| r.size)
                    .unwrap_or(self.max_size);
                let areas = Self::ring_areas(&st.regions, i, size, desc, avail, used).ok();
                if let Some(ring) = st.rings.get_mut(i as usize) {
                    ring.areas = areas;
                    ring.live = areas.is_some();
                }
            }
            FrontendReq::GET_VRING_BASE => {
                if let Some(ring) = u32_at(p, 0).and_then(|i| st.rings.get_mut(i as usize)) {
                    ring.live = false;
                }
            }
            FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => {
                for ring in &mut st.rings {
                    *ring = Ring::default();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
