//! The daemon: opens the tap once, then serves one vhost-user frontend
//! after another on the same socket path, for as long as it runs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use zcnet_tap::uring::{self, UringError};
use zcnet_tap::vxlan::header::VniOutOfRange;
use zcnet_tap::vxlan::{MacAddr, Vni, VxlanConfig, VxlanError, VxlanMetrics};
use zcnet_tap::{
    Attachment, StreamAttachment, StreamEndpoint, StreamError, Tap, TapError, UdpAttachment,
    UdpError,
};

use crate::cli::{AttachmentConfig, Config, IoEngine};
use crate::control::{self, ControlError};
use crate::device::{DeviceSpec, NetDevice};
use crate::frontend_relay;
use crate::inflight::{self, Geometry, LedgerError, Record, Session};
use crate::lending::{LendPolicy, ZeroCopyMode};
use crate::metrics::{self, Metrics, ServeError};
use crate::migration::Migration;
use crate::net_intercept::NetIntercept;
use crate::privileges::{self, PrivilegeError};
use crate::sandbox::{self, SandboxError};
use crate::socket_path::{self, Claim, SocketPathError};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot set up signal handling")]
    Control(#[from] ControlError),
    #[error("cannot open the tap")]
    Tap(#[from] TapError),
    #[error("--io-engine uring: this kernel cannot do it")]
    Uring(#[source] UringError),
    #[error("cannot open the UDP attachment")]
    Udp(#[from] UdpError),
    #[error("cannot open the TCP stream attachment")]
    Stream(#[from] StreamError),
    #[error("cannot open the VXLAN attachment")]
    Vxlan(#[from] VxlanError),
    #[error("invalid VXLAN VNI")]
    Vni(#[from] VniOutOfRange),
    #[error(transparent)]
    Metrics(#[from] ServeError),
    #[error(transparent)]
    SocketPath(#[from] SocketPathError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
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
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("cannot ask the request handler for GET_FEATURES (which installs its seccomp filter)")]
    PrimeHandler(#[source] crate::vhost_message::MessageError),
    #[error("the request handler answered zcnet's GET_FEATURES with {0}")]
    PrimeReply(String),
}

/// vhost-user-backend's error, which lacks `std::error::Error`.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct BackendError(vhost_user_backend::Error);

/// Runs the daemon until SIGTERM or SIGINT (which exit the process) or a
/// fatal error.
///
/// Everything privileged happens first, on this thread: the socket path
/// is checked (a live daemon there means refusing to start, before the
/// tap is touched), the attachments, the metrics listener and the
/// vhost-user listener are opened, and with `--user` zcnet becomes that
/// user. Only then does any other thread start (see [`crate::privileges`]),
/// each under its seccomp filter (see [`crate::sandbox`]).
pub fn run(config: Config) -> Result<(), DaemonError> {
    sandbox::init(config.seccomp)?;
    let control = control::prepare()?;
    let user = config.user.as_deref().map(privileges::lookup).transpose()?;
    socket_path::check_free(&config.socket_path)?;

    let Opened {
        mut attachments,
        mtu,
        vxlan,
    } = open_attachments(&config)?;
    let offloads = attachments[0].supported_offloads();
    let rx_offloads = attachments[0].rx_offloads();

    let mut metrics = Metrics::new(config.queue_pairs);
    if let Some(vxlan) = vxlan {
        metrics.register_vxlan(vxlan);
    }
    let metrics = Arc::new(metrics);
    let metrics_listener = config.metrics.map(metrics::bind).transpose()?;

    let ledger = open_ledger(&config.ledger, config.queue_pairs, config.queue_size)?;

    let path = config.socket_path.display().to_string();
    let listener = socket_path::bind(&config.socket_path)?;
    if let Some(user) = &user {
        user.chown(&config.socket_path)?;
    }
    let claim = Claim::record(&config.socket_path)?;
    control.own_socket(claim.clone());
    // A fatal error below removes the socket file (if still ours) on the
    // way out; SIGTERM and SIGINT do it in the control thread.
    let _claim = ReleaseOnDrop(claim);
    if let Some(user) = &user {
        user.switch()?;
    }
    sandbox::lock_down_main()?;
    control.start()?;
    if let Some(l) = metrics_listener {
        metrics::serve(l, metrics.clone())?;
    }
    let mut listener = Listener::from(listener);
    let spec = DeviceSpec {
        mac: config.mac,
        mtu,
        queue_size: config.queue_size,
        offloads,
        rx_offloads,
        lend: LendPolicy {
            mode: config.zerocopy,
            min_bytes: config.zerocopy_min_bytes,
            cap: LEND_CAP,
        },
        drain: config.drain,
    };
    info!("listening for a vhost-user frontend on {path}");
    loop {
        attachments = serve_one(&spec, attachments, &metrics, &ledger, &mut listener)?;
        info!("frontend disconnected; waiting for the next connection on {path}");
    }
}

/// Releases the socket path when the daemon returns with an error.
struct ReleaseOnDrop(Claim);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The ledger for two rings per queue pair of at most `queue_size`
/// entries (see `inflight`).
fn open_ledger(path: &Path, pairs: usize, queue_size: u16) -> Result<Arc<Record>, DaemonError> {
    let geometry = Geometry {
        // At most 2 * MAX_QUEUE_PAIRS rings.
        num_queues: u16::try_from(2 * pairs).unwrap_or(u16::MAX),
        queue_size,
    };
    Ok(inflight::open_ledger(path, geometry)?)
}

/// The most TX chains a queue lends at once (also at most a quarter of
/// the ring), as vhost-net did.
const LEND_CAP: usize = 128;

/// The attachments of every queue pair, and what they tell the device.
struct Opened {
    attachments: Vec<Box<dyn Attachment>>,
    /// The MTU the device reports: `--mtu`, or what the attachment can
    /// carry (VXLAN: the underlay's minus the overhead).
    mtu: Option<u16>,
    /// The VXLAN attachment's counters, for the metrics.
    vxlan: Option<VxlanMetrics>,
}

impl Opened {
    fn plain(attachments: Vec<Box<dyn Attachment>>, config: &Config) -> Opened {
        Opened {
            attachments,
            mtu: config.mtu,
            vxlan: None,
        }
    }
}

/// Opens the attachment of every queue pair, once for the daemon's life.
fn open_attachments(config: &Config) -> Result<Opened, DaemonError> {
    let zc = config.zerocopy != ZeroCopyMode::Off;
    if config.io_engine.is_some() && !matches!(config.attachment, AttachmentConfig::Tap(_)) {
        info!("--io-engine applies to a tap; socket attachments send with one sendmsg per frame");
    }
    match &config.attachment {
        AttachmentConfig::Tap(name) => {
            let mut taps = Tap::open_queues(name, config.queue_pairs)?;
            info!(
                "tap {name} open with {} queue(s); the kernel accepts offloads {:?}",
                config.queue_pairs,
                taps[0].supported_offloads()
            );
            let engine = tap_io_engine(config.io_engine)?;
            for tap in &mut taps {
                tap.set_io_engine(engine);
            }
            Ok(Opened::plain(
                taps.into_iter().map(|t| Box::new(t) as _).collect(),
                config,
            ))
        }
        AttachmentConfig::Udp {
            local,
            remote,
            peer_hdr,
        } => {
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
            Ok(Opened::plain(vec![Box::new(udp)], config))
        }
        AttachmentConfig::StreamConnect { remote, peer_hdr } => Ok(Opened::plain(
            open_stream(config, StreamEndpoint::Connect(*remote), *peer_hdr)?,
            config,
        )),
        AttachmentConfig::StreamListen { local, peer_hdr } => Ok(Opened::plain(
            open_stream(config, StreamEndpoint::Listen(*local), *peer_hdr)?,
            config,
        )),
        AttachmentConfig::Vxlan(v) => {
            let vx = zcnet_tap::vxlan::open(&VxlanConfig {
                vni: Vni::new(v.vni)?,
                local: v.local,
                remotes: v.remotes.clone(),
                statics: v.fdb.iter().map(|(m, a)| (MacAddr(*m), *a)).collect(),
                ageing: v.ageing,
                queue_pairs: config.queue_pairs,
                zerocopy: zc,
                // Measured: a lent TSO frame costs more than a copied one
                // (the kernel's 17 pages per lent send), so only `on`
                // lends them.
                lend_tso: config.zerocopy == ZeroCopyMode::On,
            })?;
            let fits = u16::try_from(vx.guest_mtu()).unwrap_or(u16::MAX);
            let mtu = match config.mtu {
                Some(m) if m > fits => {
                    warn!(
                        "--mtu {m}: the underlay carries at most {fits} bytes of inner packet \
                         (underlay MTU {} minus VXLAN's headers); larger frames will be dropped \
                         and counted, never fragmented",
                        vx.underlay_mtu()
                    );
                    m
                }
                Some(m) => m,
                None => fits,
            };
            info!(
                "VXLAN VNI {} on {} to remote VTEPs {:?}: underlay MTU {}, guest MTU {mtu}, \
                 {} queue pair(s), {} transmit sockets (outer source ports) each; zero-copy \
                 {:?}, frames from {} bytes lent{}",
                v.vni,
                vx.local(),
                v.remotes,
                vx.underlay_mtu(),
                vx.pairs.len(),
                zcnet_tap::vxlan::TX_SOCKETS,
                config.zerocopy,
                config.zerocopy_min_bytes,
                if config.zerocopy == ZeroCopyMode::On {
                    ", TSO frames too"
                } else {
                    ", TSO frames copied"
                }
            );
            Ok(Opened {
                mtu: Some(mtu),
                vxlan: Some(vx.metrics),
                attachments: vx.pairs.into_iter().map(|a| Box::new(a) as _).collect(),
            })
        }
    }
}

/// The I/O engine of the tap's TX: what `--io-engine` asked for, or
/// io_uring if the kernel offers it; logged either way.
fn tap_io_engine(asked: Option<IoEngine>) -> Result<zcnet_tap::IoEngine, DaemonError> {
    let engine = match (asked, uring::probe()) {
        (Some(IoEngine::Syscall), _) => {
            info!("TX I/O engine: syscall (--io-engine syscall): one writev per frame");
            zcnet_tap::IoEngine::Syscall
        }
        (Some(IoEngine::Uring), Err(e)) => return Err(DaemonError::Uring(e)),
        (None, Err(e)) => {
            info!(
                "TX I/O engine: syscall, one writev per frame: io_uring is not usable here ({})",
                crate::error_chain(&e)
            );
            zcnet_tap::IoEngine::Syscall
        }
        (_, Ok(())) => {
            info!(
                "TX I/O engine: uring{}: up to {} frames per io_uring_enter, linked writes \
                 on a registered fd",
                if asked.is_some() {
                    " (--io-engine uring)"
                } else {
                    " (this kernel has it)"
                },
                zcnet_tap::MAX_BATCH
            );
            zcnet_tap::IoEngine::Uring
        }
    };
    Ok(engine)
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
    ledger: &Arc<Record>,
    listener: &mut Listener,
) -> Result<Vec<Box<dyn Attachment>>, DaemonError> {
    serve_connection(spec, attachments, metrics, ledger, || accept(listener))
}

/// Serves the frontend that `accept` returns until it disconnects (the
/// device exists before the frontend connects, as it always has).
pub(crate) fn serve_connection(
    spec: &DeviceSpec,
    attachments: Vec<Box<dyn Attachment>>,
    metrics: &Metrics,
    ledger: &Arc<Record>,
    accept: impl FnOnce() -> Result<UnixStream, DaemonError>,
) -> Result<Vec<Box<dyn Attachment>>, DaemonError> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let rings = 2 * attachments.len();
    let session = Arc::new(Session::new(
        ledger.clone(),
        u16::try_from(rings).unwrap_or(u16::MAX),
        spec.queue_size,
    ));
    let device = Arc::new(
        NetDevice::new(
            spec.clone(),
            attachments,
            metrics,
            mem.clone(),
            session.clone(),
        )
        .map_err(DaemonError::Device)?,
    );
    let migration = Migration::new(device.dirty_log(), mem.clone(), device.clone());
    let mut daemon = VhostUserDaemon::new(sandbox::HANDLER_THREAD.to_owned(), device.clone(), mem)
        .map_err(|e| DaemonError::Vhost(BackendError(e)))?;
    let front = accept()?;
    // The handler gets the far end of a private connection; the relay
    // carries messages between it and the frontend (see frontend_relay).
    let (mut private, back) = private_connection().map_err(DaemonError::Relay)?;
    daemon
        .start(&mut private)
        .map_err(|e| DaemonError::Vhost(BackendError(e)))?;
    drop(private);
    prime_handler(&back)?;
    let intercept = Arc::new(
        NetIntercept::new(device.queue_pairs(), spec.queue_size, device.clone())
            .with_inflight(session)
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
    device.close_leaked_exit_events();
    Ok(device.take_attachments())
}

/// Sends the handler a GET_FEATURES of zcnet's own and drops the reply,
/// before any request of the frontend: `NetDevice::features` installs the
/// frontend seccomp filter on the handler's thread (see [`crate::sandbox`]),
/// so the handler serves the frontend under it from its first request.
fn prime_handler(back: &UnixStream) -> Result<(), DaemonError> {
    use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag};

    use crate::vhost_message::Message;

    // VERSION_1 of the header flags, which every request carries.
    let request = Message::new(
        FrontendReq::GET_FEATURES,
        VhostUserHeaderFlag::from_bits_retain(0x1),
        Vec::new(),
        Vec::new(),
    );
    request.write_to(back).map_err(DaemonError::PrimeHandler)?;
    match Message::read_from(back).map_err(DaemonError::PrimeHandler)? {
        Some(reply) if reply.request() == Some(FrontendReq::GET_FEATURES) => Ok(()),
        Some(reply) => Err(DaemonError::PrimeReply(format!(
            "a reply to {}",
            reply.code()
        ))),
        None => Err(DaemonError::PrimeReply(
            "no reply: it closed the connection".to_owned(),
        )),
    }
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
