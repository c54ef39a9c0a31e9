//! The VXLAN attachment's UDP sockets and the system calls on them: the
//! receive socket of each queue pair (bound to the local VTEP address with
//! `SO_REUSEPORT`), the transmit sockets (bound to ports the kernel picks),
//! the underlay MTU probe, and `sendmsg`/`recvmsg` with addresses and
//! `UDP_SEGMENT`.
//!
//! Every socket here is owned by a `UdpSocket` (which closes it); the
//! functions borrow its fd for one call.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `UDP_SEGMENT` (`include/uapi/linux/udp.h`): the GSO size of a send.
const UDP_SEGMENT: libc::c_int = 103;
/// `IP_PMTUDISC_DO` / `IPV6_PMTUDISC_DO`: set DF, never fragment locally;
/// a datagram larger than the path MTU fails with EMSGSIZE.
const PMTUDISC_DO: libc::c_int = 2;
/// The receive buffer asked for each receive socket: room for a burst of
/// full-size datagrams while the worker is busy.
const RCVBUF: libc::c_int = 4 << 20;
/// The send buffer asked for each transmit socket. Lent skbs count against
/// it until the kernel releases them, so it bounds what may be in flight
/// on one socket before sends return EAGAIN.
const SNDBUF: libc::c_int = 4 << 20;

/// A socket address in the form `sendmsg` takes, built once per VTEP.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: &SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for
                // every sockaddr type; this writes one sockaddr_in at its
                // start.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for one sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }
}

/// Storage for the source address `recvmsg` reports.
pub struct SourceAddr {
    storage: libc::sockaddr_storage,
}

impl SourceAddr {
    pub fn new() -> SourceAddr {
        SourceAddr {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { mem::zeroed() },
        }
    }

    /// The IP address last received into this storage (IPv4-mapped IPv6
    /// addresses as IPv4), if it is an IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        match libc::c_int::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET)
                // at the start of the storage, which is aligned for it.
                let sin: &libc::sockaddr_in =
                    unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast() };
                Some(IpAddr::V4(Ipv4Addr::from(
                    sin.sin_addr.s_addr.to_ne_bytes(),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, a sockaddr_in6 (family AF_INET6).
                let sin6: &libc::sockaddr_in6 =
                    unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast() };
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)).to_canonical())
            }
            _ => None,
        }
    }
}

impl Default for SourceAddr {
    fn default() -> Self {
        Self::new()
    }
}

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is a socket borrowed for this call; the value is a c_int
    // on our stack whose size we pass.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a socket borrowed for this call; the kernel writes at
    // most `len` bytes into `value`, a c_int on our stack.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// A non-blocking, close-on-exec UDP socket of `addr`'s family (IPv6
/// sockets are IPv6-only), not yet bound.
fn udp_socket(addr: &SocketAddr) -> io::Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket creation; the result is checked below.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let sock = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(raw) });
    if family == libc::AF_INET6 {
        set_int(sock_fd(&sock), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    Ok(sock)
}

fn sock_fd(s: &UdpSocket) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    s.as_fd()
}

fn bind(sock: &UdpSocket, addr: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::new(addr);
    // SAFETY: `sock` owns the fd; `raw` holds a sockaddr of `raw.len`
    // bytes on our stack.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw.storage as *const libc::sockaddr_storage).cast(),
            raw.len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The receive socket of one queue pair: bound to the local VTEP address
/// with `SO_REUSEPORT`, so every pair's socket shares the address and the
/// kernel spreads incoming datagrams over them by flow (their 4-tuple hash;
/// a remote VTEP varies its source port by inner flow).
pub fn open_rx(local: &SocketAddr) -> io::Result<UdpSocket> {
    let sock = udp_socket(local)?;
    set_int(sock_fd(&sock), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Best effort: a smaller buffer only drops more under bursts.
    let _ = set_int(
        sock_fd(&sock),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        RCVBUF,
    )
    .or_else(|_| set_int(sock_fd(&sock), libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF));
    bind(&sock, local)?;
    Ok(sock)
}

/// A transmit socket: bound to the local VTEP's IP address and a port the
/// kernel picks from `ip_local_port_range` (as the kernel's `vxlan` picks
/// its source ports), never fragmenting (`PMTUDISC_DO`).
pub fn open_tx(local: &SocketAddr) -> io::Result<UdpSocket> {
    let sock = udp_socket(local)?;
    let (level, opt) = match local {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
    };
    set_int(sock_fd(&sock), level, opt, PMTUDISC_DO)?;
    // Best effort, as for the receive buffer.
    let _ = set_int(
        sock_fd(&sock),
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        SNDBUF,
    )
    .or_else(|_| set_int(sock_fd(&sock), libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF));
    bind(&sock, &SocketAddr::new(local.ip(), 0))?;
    Ok(sock)
}

/// The MTU of the route from `local` to `remote`, as the kernel knows it
/// (`IP_MTU` / `IPV6_MTU` of a UDP socket connected there: the route's
/// device MTU, or a smaller path MTU the kernel learned).
pub fn path_mtu(local: &SocketAddr, remote: &SocketAddr) -> io::Result<usize> {
    let sock = udp_socket(local)?;
    bind(&sock, &SocketAddr::new(local.ip(), 0))?;
    sock.connect(remote)?;
    let (level, opt) = match remote {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mtu = get_int(sock_fd(&sock), level, opt)?;
    usize::try_from(mtu).map_err(|_| io::Error::other(format!("the kernel reported MTU {mtu}")))
}

/// `sendmsg` of `iov` to `to`, never blocking; with `gso_size`, the kernel
/// cuts the data into datagrams of that many bytes (`UDP_SEGMENT`); with
/// `lend`, the pages are lent (`MSG_ZEROCOPY`).
///
/// # Safety
/// Every iovec must describe mapped memory. With `lend`, that memory must
/// stay mapped, and unchanged by zcnet, until the kernel's notification
/// for this send (guest memory of a chain that goes back to the guest only
/// then, or a header slot held until then).
pub unsafe fn send_to(
    fd: BorrowedFd<'_>,
    iov: &[libc::iovec],
    to: &RawAddr,
    gso_size: Option<u16>,
    lend: bool,
) -> io::Result<usize> {
    // Room for one cmsg carrying a u16, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&to.storage as *const libc::sockaddr_storage)
        .cast_mut()
        .cast();
    msg.msg_namelen = to.len;
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len();
    if let Some(size) = gso_size {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
        debug_assert!(space <= mem::size_of_val(&control));
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg_control` points at `control`, which is large enough
        // for one cmsg of a u16 (checked above) and aligned for cmsghdr
        // (u64 alignment); CMSG_FIRSTHDR therefore returns a pointer into it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
        }
    }
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if lend { libc::MSG_ZEROCOPY } else { 0 };
    // SAFETY: `fd` is a socket borrowed for this call; `msg` points at the
    // address, the control buffer and `iov`, all alive for the call, and
    // the caller guarantees the iovecs describe mapped memory (kept until
    // the notification when lent). sendmsg only reads them.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `recvmsg` of one datagram into `iov`, never blocking, with its sender's
/// address in `from`. Returns the datagram's real length (`MSG_TRUNC`),
/// which exceeds what `iov` holds when it was cut.
///
/// # Safety
/// Every iovec must describe mapped, writable memory that no Rust
/// reference points into.
pub unsafe fn recv_from(
    fd: BorrowedFd<'_>,
    iov: &[libc::iovec],
    from: &mut SourceAddr,
) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut from.storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len();
    // SAFETY: `fd` is a socket borrowed for this call; the name buffer is
    // `from`'s storage, of the size given; the caller guarantees the
    // iovecs are mapped, writable and unaliased.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn addresses_round_trip_through_the_kernel() {
        let rx = open_rx(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = open_tx(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let data = *b"hello, vtep";
        let iov = [libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        }];
        // SAFETY: `data` is on our stack for the call; not lent.
        let n = unsafe { send_to(tx.as_fd(), &iov, &RawAddr::new(&to), None, false) }.unwrap();
        assert_eq!(n, data.len());
        let mut buf = [0u8; 4];
        let riov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let mut from = SourceAddr::new();
        rx.set_nonblocking(false).unwrap();
        // SAFETY: `buf` is ours, on the stack, not otherwise borrowed.
        let n = unsafe { recv_from(rx.as_fd(), &riov, &mut from) }.unwrap();
        assert_eq!(n, data.len(), "MSG_TRUNC reports the real length");
        assert_eq!(&buf, b"hell");
        assert_eq!(from.ip(), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            path_mtu(&"127.0.0.1:0".parse().unwrap(), &to).unwrap(),
            65535,
            "loopback's MTU, capped at the largest IPv4 packet"
        );
    }

    #[test]
    fn receive_sockets_share_the_local_address() {
        let a = open_rx(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let local = a.local_addr().unwrap();
        let b = open_rx(&local).expect("a second SO_REUSEPORT socket binds");
        assert_eq!(b.local_addr().unwrap(), local);
    }
}
