//! The daemon: opens the tap once, then serves one vhost-user frontend
//! after another on the same socket path, for as long as it runs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use zcnet_tap::{
    Attachment, StreamAttachment, StreamEndpoint, StreamError, Tap, TapError, UdpAttachment,
    UdpError,
};

use crate::cli::{AttachmentConfig, Config};
use crate::control::{self, ControlError};
use crate::device::{DeviceSpec, NetDevice};
use crate::frontend_relay;
use crate::lending::{LendPolicy, ZeroCopyMode};
use crate::metrics::{self, Metrics, ServeError};
use crate::migration::Migration;
use crate::net_intercept::NetIntercept;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot set up signal handling")]
    Control(#[from] ControlError),
    #[error("cannot open the tap")]
    Tap(#[from] TapError),
    #[error("cannot open the UDP attachment")]
    Udp(#[from] UdpError),
    #[error("cannot open the TCP stream attachment")]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Metrics(#[from] ServeError),
    #[error("cannot listen on {path}")]
    Listen {
        path: String,
        #[source]
        source: vhost::vhost_user::Error,
    },
    #[error("cannot create the per-connection device")]
    Device(#[source] std::io::Error),
    #[error("vhost-user daemon failed")]
    Vhost(#[source] BackendError),
    #[error("cannot accept a frontend connection")]
    Accept {
        #[source]
        source: vhost::vhost_user::Error,
    },
    #[error("cannot relay the frontend's connection")]
    Relay(#[source] std::io::Error),
    #[error("cannot add the attachment to the queue workers")]
    Register(#[source] std::io::Error),
}

/// vhost-user-backend's error, which lacks `std::error::Error`.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct BackendError(vhost_user_backend::Error);

/// Runs the daemon until SIGTERM or SIGINT (which exit the process) or a
/// fatal error.
pub fn run(config: Config) -> Result<(), DaemonError> {
    control::start(config.socket_path.clone())?;

    let mut attachments = open_attachments(&config)?;
    let offloads = attachments[0].supported_offloads();

    let metrics = Arc::new(Metrics::new(config.queue_pairs));
    if let Some(addr) = config.metrics {
        metrics::serve(addr, metrics.clone())?;
    }

    let path = config.socket_path.display().to_string();
    let mut listener =
        Listener::new(&config.socket_path, true).map_err(|source| DaemonError::Listen {
            path: path.clone(),
            source,
        })?;
    let spec = DeviceSpec {
        mac: config.mac,
        mtu: config.mtu,
        queue_size: config.queue_size,
        offloads,
        lend: LendPolicy {
            mode: config.zerocopy,
            min_bytes: config.zerocopy_min_bytes,
            cap: LEND_CAP,
        },
        drain: config.drain,
    };
    info!("listening for a vhost-user frontend on {path}");
    loop {
        attachments = serve_one(&spec, attachments, &metrics, &mut listener)?;
        info!("frontend disconnected; waiting for the next connection on {path}");
    }
}

/// The most TX chains a queue lends at once (also at most a quarter of
/// the ring), as vhost-net did.
const LEND_CAP: usize = 128;

/// Opens the attachment of every queue pair, once for the daemon's life.
fn open_attachments(config: &Config) -> Result<Vec<Box<dyn Attachment>>, DaemonError> {
    match &config.attachment {
        AttachmentConfig::Tap(name) => {
            let taps = Tap::open_queues(name, config.queue_pairs)?;
            info!(
                "tap {name} open with {} queue(s); the kernel accepts offloads {:?}",
                config.queue_pairs,
                taps[0].supported_offloads()
            );
            Ok(taps.into_iter().map(|t| Box::new(t) as _).collect())
        }
        AttachmentConfig::Udp {
            local,
            remote,
            peer_hdr,
        } => {
            let zc = config.zerocopy != ZeroCopyMode::Off;
            let udp = UdpAttachment::open(*local, *remote, *peer_hdr, zc)?;
            info!(
                "UDP attachment {local} -> {remote} ({}; zero-copy {:?}, frames from {} bytes lent)",
                if *peer_hdr {
                    "virtio-net header on the wire"
                } else {
                    "raw frames"
                },
                config.zerocopy,
                config.zerocopy_min_bytes
            );
            Ok(vec![Box::new(udp)])
        }
        AttachmentConfig::StreamConnect { remote, peer_hdr } => {
            open_stream(config, StreamEndpoint::Connect(*remote), *peer_hdr)
        }
        AttachmentConfig::StreamListen { local, peer_hdr } => {
            open_stream(config, StreamEndpoint::Listen(*local), *peer_hdr)
        }
    }
}

fn open_stream(
    config: &Config,
    endpoint: StreamEndpoint,
    peer_hdr: bool,
) -> Result<Vec<Box<dyn Attachment>>, DaemonError> {
    let zc = config.zerocopy != ZeroCopyMode::Off;
    let stream = StreamAttachment::open(endpoint, peer_hdr, zc)?;
    let (how, addr) = match endpoint {
        StreamEndpoint::Connect(a) => ("connecting to", a),
        StreamEndpoint::Listen(a) => ("listening on", a),
    };
    info!(
        "TCP stream attachment {how} {addr} ({}; zero-copy {:?}, frames from {} bytes lent)",
        if peer_hdr {
            "virtio-net header on the wire, checksum and TSO offloads"
        } else {
            "raw frames, no offloads"
        },
        config.zerocopy,
        config.zerocopy_min_bytes
    );
    Ok(vec![Box::new(stream)])
}

/// Accepts one frontend and serves it until it disconnects; the queue
/// pairs own the attachments meanwhile and hand them back at the end.
fn serve_one(
    spec: &DeviceSpec,
    attachments: Vec<Box<dyn Attachment>>,
    metrics: &Metrics,
    listener: &mut Listener,
) -> Result<Vec<Box<dyn Attachment>>, DaemonError> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let device = Arc::new(
        NetDevice::new(spec.clone(), attachments, metrics, mem.clone())
            .map_err(DaemonError::Device)?,
    );
    let migration = Migration::new(device.dirty_log(), mem.clone(), device.clone());
    let mut daemon = VhostUserDaemon::new("zcnet-vhost-user".to_owned(), device.clone(), mem)
        .map_err(|e| DaemonError::Vhost(BackendError(e)))?;
    let front = accept(listener)?;
    // The handler gets the far end of a private connection; the relay
    // carries messages between it and the frontend (see frontend_relay).
    let (mut private, back) = private_connection().map_err(DaemonError::Relay)?;
    daemon
        .start(&mut private)
        .map_err(|e| DaemonError::Vhost(BackendError(e)))?;
    drop(private);
    let intercept = Arc::new(
        NetIntercept::new(device.queue_pairs(), spec.queue_size, device.clone())
            .with_migration(migration),
    );
    let relay = frontend_relay::start(front, back, intercept).map_err(DaemonError::Relay)?;
    metrics.connections.inc();
    info!("frontend connected ({} queue pairs)", device.queue_pairs());
    let workers = daemon.get_epoll_handlers();
    device.register(&workers).map_err(DaemonError::Register)?;
    match daemon.wait() {
        Ok(()) => {}
        // The frontend closed its socket: the normal end of a VM.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::SocketBroken(_),
        )) => {}
        Err(e) => warn!("frontend connection ended: {e}"),
    }
    device.unregister(&workers);
    for w in &workers {
        w.send_exit_event();
    }
    for t in relay {
        let _ = t.join();
    }
    // The workers are gone: the attachments come back for the next one.
    drop(daemon);
    Ok(device.take_attachments())
}

/// Waits for the next frontend on the public socket.
fn accept(listener: &mut Listener) -> Result<UnixStream, DaemonError> {
    loop {
        match listener.accept() {
            Ok(Some(stream)) => return Ok(stream),
            Ok(None) => continue,
            Err(source) => {
                return Err(DaemonError::Accept { source });
            }
        }
    }
}

/// A listener on a fresh abstract socket name (no file, not reachable by
/// path) with one connection already queued on it: the handler accepts
/// that connection, the relay keeps the returned stream.
fn private_connection() -> std::io::Result<(Listener, UnixStream)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "zcnet-{}-{}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        RandomState::new().build_hasher().finish()
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = UnixListener::bind_addr(&addr)?;
    let stream = UnixStream::connect_addr(&addr)?;
    Ok((Listener::from(listener), stream))
}
