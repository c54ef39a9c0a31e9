//! The daemon's control loop: signals. It runs on its own thread, driven
//! by event-manager, and never touches the queues.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use log::{error, info};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use thiserror::Error;
use vmm_sys_util::epoll::EventSet;

use crate::sandbox::{self, Kind};
use crate::socket_path::Claim;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot block SIGTERM and SIGINT")]
    Mask(#[source] nix::Error),
    #[error("cannot create a signalfd")]
    SignalFd(#[source] nix::Error),
    #[error("cannot create the control event loop")]
    EventManager(#[source] event_manager::Error),
    #[error("cannot start the control thread")]
    Thread(#[source] std::io::Error),
}

/// Ends the daemon on SIGTERM or SIGINT: removes the socket file if it
/// is still the one this zcnet bound (see [`crate::socket_path`]), so no
/// frontend connects to a dead path, and exits with status 0.
struct Terminator {
    fd: SignalFd,
    socket: Arc<OnceLock<Claim>>,
}

impl MutEventSubscriber for Terminator {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let signal = match self.fd.read_signal() {
            Ok(Some(info)) => {
                Signal::try_from(info.ssi_signo as i32).map_or("a signal", |s| s.as_str())
            }
            Ok(None) => return,
            Err(e) => {
                error!("cannot read the signalfd: {e}");
                return;
            }
        };
        match self.socket.get() {
            Some(claim) => {
                info!("received {signal}: exiting");
                claim.release();
            }
            None => info!("received {signal} before listening: exiting"),
        }
        std::process::exit(0);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd.as_raw_fd(), EventSet::IN)) {
            error!("cannot watch for signals: {e}");
        }
    }
}

/// SIGTERM and SIGINT, blocked and waiting on a signalfd, before the
/// thread that handles them exists: signals that arrive meanwhile wait
/// there. No thread is started until [`Control::start`], so the daemon can
/// give up its privileges first.
pub struct Control {
    fd: SignalFd,
    socket: Arc<OnceLock<Claim>>,
}

/// Blocks SIGTERM and SIGINT in the calling thread (and so in every thread
/// it starts later). Call it before starting any other thread.
pub fn prepare() -> Result<Control, ControlError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(ControlError::Mask)?;
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(ControlError::SignalFd)?;
    Ok(Control {
        fd,
        socket: Arc::new(OnceLock::new()),
    })
}

impl Control {
    /// The socket file to remove at exit, if it is still this one then.
    pub fn own_socket(&self, claim: Claim) {
        let _ = self.socket.set(claim);
    }

    /// Starts the thread that handles the signals.
    pub fn start(self) -> Result<(), ControlError> {
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(ControlError::EventManager)?;
        manager.add_subscriber(Arc::new(Mutex::new(Terminator {
            fd: self.fd,
            socket: self.socket,
        })));
        thread::Builder::new()
            .name("zcnet-control".to_owned())
            .spawn(move || {
                sandbox::enter(Kind::Control);
                loop {
                    if let Err(e) = manager.run() {
                        error!("control loop: {e}");
                    }
                }
            })
            .map_err(ControlError::Thread)?;
        Ok(())
    }
}
