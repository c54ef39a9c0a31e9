//! Namespaces for the TCP stream attachment: zcnet in one, joined by a
//! veth (MTU 65535) to a second where the test's plain TCP peer (or a
//! second zcnet) runs; nftables in the peer namespace can drop everything
//! that arrives there, so TCP keeps lent pages until it is let through.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::daemon::{Daemon, ZcnetBin};
use crate::netns::NetNs;

/// zcnet's side of the veth.
pub const ZCNET_ADDR: &str = "10.9.0.1:7000";
/// The peer's side.
pub const PEER_ADDR: &str = "10.9.0.2:7000";
pub const WAIT: Duration = Duration::from_secs(20);

/// Which end of the connection zcnet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `--stream-connect PEER_ADDR`: the test listens.
    Connect,
    /// `--stream-listen ZCNET_ADDR`: the test connects.
    Listen,
}

pub struct StreamLab {
    pub daemon: Daemon,
    /// zcnet's arguments, for restarts.
    args: Vec<String>,
    pub ns: NetNs,
    pub peer: NetNs,
}

impl StreamLab {
    /// Starts zcnet as `role` with `extra` arguments. For `Role::Connect`
    /// the returned listener is already listening on `PEER_ADDR`, so the
    /// first attempt connects.
    pub fn new(bin: &ZcnetBin, role: Role, extra: &[&str]) -> (StreamLab, Option<TcpListener>) {
        let (ns, peer) = NetNs::veth_pair();
        let listener = (role == Role::Connect).then(|| listen(&peer, PEER_ADDR));
        let mut args = match role {
            Role::Connect => vec!["--stream-connect", PEER_ADDR],
            Role::Listen => vec!["--stream-listen", ZCNET_ADDR],
        };
        args.extend_from_slice(extra);
        let daemon = Daemon::start_args(bin, &ns, &args);
        let args = args.iter().map(|a| a.to_string()).collect();
        (
            StreamLab {
                daemon,
                args,
                ns,
                peer,
            },
            listener,
        )
    }

    /// Kills zcnet with SIGKILL and starts it again with the same
    /// arguments (see [`Daemon::kill_and_restart`]).
    pub fn kill_and_restart(&mut self) {
        self.daemon.kill();
        self.restart();
    }

    /// Starts zcnet again, killed with [`Daemon::kill`], with the same
    /// arguments.
    pub fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.daemon.restart_args(&self.ns, &args);
    }

    /// Connects from the peer namespace to zcnet's listener.
    pub fn connect(&self) -> TcpStream {
        self.peer.enter(|| {
            let s = TcpStream::connect_timeout(&ZCNET_ADDR.parse().unwrap(), WAIT)
                .expect("connect to zcnet");
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        })
    }

    /// Drops every packet that arrives in the peer namespace.
    pub fn drop_peer_ingress(&self) {
        self.peer
            .exec(&["nft", "add", "table", "inet", "zcnet_test"]);
        self.peer.exec(&[
            "nft",
            "add",
            "chain",
            "inet",
            "zcnet_test",
            "in",
            "{ type filter hook input priority 0; policy drop; }",
        ]);
    }

    /// Lets packets into the peer namespace again.
    pub fn accept_peer_ingress(&self) {
        self.peer
            .exec(&["nft", "delete", "table", "inet", "zcnet_test"]);
    }

    /// Waits (bounded) until a queue-0 counter reaches `value`.
    pub fn wait_metric(&self, metric: &str, value: u64) -> String {
        Daemon::wait_metric(&self.ns, metric, value)
    }
}

/// A listener in `ns` on `addr`.
pub fn listen(ns: &NetNs, addr: &'static str) -> TcpListener {
    ns.enter(move || TcpListener::bind(addr).expect("bind the peer's listener"))
}

/// Accepts one connection within `WAIT`.
pub fn accept(listener: &TcpListener) -> TcpStream {
    let mut pfd = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ms = WAIT.as_millis() as i32;
    let ready = poll(&mut pfd, PollTimeout::try_from(ms).unwrap()).expect("poll the listener");
    assert_eq!(ready, 1, "zcnet did not connect within {WAIT:?}");
    let (s, _) = listener.accept().expect("accept zcnet");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads one record (length, then that many bytes).
pub fn read_record(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("a record's length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("a record's body");
    body
}

/// Writes one record.
pub fn write_record(s: &mut TcpStream, body: &[u8]) {
    let mut r = (body.len() as u32).to_be_bytes().to_vec();
    r.extend_from_slice(body);
    s.write_all(&r).expect("write a record");
}

/// Closes `s` with a reset (SO_LINGER 0), as a crashed peer would.
pub fn reset(s: TcpStream) {
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .expect("SO_LINGER");
    drop(s);
}
