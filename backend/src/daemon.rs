//! The daemon: opens the tap once, then serves one vhost-user frontend
//! after another on the same socket path, for as long as it runs.

use std::sync::Arc;

use log::{info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use zcnet_tap::{Attachment, Tap, TapError};

use crate::cli::Config;
use crate::control::{self, ControlError};
use crate::device::{DeviceSpec, NetDevice};
use crate::metrics::{self, Metrics, ServeError};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot set up signal handling")]
    Control(#[from] ControlError),
    #[error("cannot open the tap")]
    Tap(#[from] TapError),
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

    let taps = Tap::open_queues(&config.tap, config.queue_pairs)?;
    let offloads = taps[0].supported_offloads();
    info!(
        "tap {} open with {} queue(s); the kernel accepts offloads {offloads:?}",
        config.tap, config.queue_pairs
    );
    let attachments: Vec<Arc<dyn Attachment>> =
        taps.into_iter().map(|t| Arc::new(t) as _).collect();

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
    };
    info!("listening for a vhost-user frontend on {path}");
    loop {
        serve_one(&spec, &attachments, &metrics, &mut listener)?;
        info!("frontend disconnected; waiting for the next connection on {path}");
    }
}

/// Accepts one frontend and serves it until it disconnects.
fn serve_one(
    spec: &DeviceSpec,
    attachments: &[Arc<dyn Attachment>],
    metrics: &Metrics,
    listener: &mut Listener,
) -> Result<(), DaemonError> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let device = Arc::new(
        NetDevice::new(spec.clone(), attachments, metrics, mem.clone())
            .map_err(DaemonError::Device)?,
    );
    let mut daemon = VhostUserDaemon::new("zcnet-vhost-user".to_owned(), device.clone(), mem)
        .map_err(|e| DaemonError::Vhost(BackendError(e)))?;
    daemon
        .start(listener)
        .map_err(|e| DaemonError::Vhost(BackendError(e)))?;
    metrics.connections.inc();
    info!("frontend connected ({} queue pairs)", device.queue_pairs());
    let workers = daemon.get_epoll_handlers();
    device.register(&workers).map_err(DaemonError::Register)?;
    if let Err(e) = daemon.wait() {
        warn!("frontend connection ended: {e}");
    }
    device.unregister(&workers);
    for w in &workers {
        w.send_exit_event();
    }
    Ok(())
}
