//! The threads of one measurement (the fake guest's drivers, the injector,
//! the raw tap's writers or readers), the flag that stops them, and their
//! CPU time.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use crate::cpu::{self, CpuOf};
use crate::measure::MeasureError;

/// What a thread's CPU time counts towards.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side being measured: the raw tap's writers and readers.
    Measured,
    /// What feeds it: the fake guest's drivers, the RX injector.
    Feeder,
}

type Outcome = Result<(), String>;

struct Member {
    name: String,
    role: Role,
    tid: libc::pid_t,
    handle: JoinHandle<Outcome>,
}

/// The threads of one measurement and the flag that stops them.
pub struct Crew {
    stop: Arc<AtomicBool>,
    members: Vec<Member>,
}

impl Crew {
    pub fn new() -> Crew {
        Crew {
            stop: Arc::new(AtomicBool::new(false)),
            members: Vec::new(),
        }
    }

    /// Starts `f` on a thread and returns once its thread id is known.
    pub fn spawn(
        &mut self,
        name: String,
        role: Role,
        f: impl FnOnce(&AtomicBool) -> Outcome + Send + 'static,
    ) {
        let (tid_tx, tid_rx) = mpsc::channel();
        let stop = Arc::clone(&self.stop);
        let handle = thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _ = tid_tx.send(cpu::current_thread());
                f(&stop)
            })
            .expect("spawn a bench thread");
        let tid = tid_rx.recv().expect("a bench thread reports its id first");
        self.members.push(Member {
            name,
            role,
            tid,
            handle,
        });
    }

    /// Some thread has returned (or panicked) before being told to stop.
    pub fn any_ended(&self) -> bool {
        self.members.iter().any(|m| m.handle.is_finished())
    }

    /// The CPU time so far of the threads in `role`.
    pub fn cpu(&self, role: Role) -> io::Result<f64> {
        self.members
            .iter()
            .filter(|m| m.role == role)
            .map(|m| cpu::seconds(CpuOf::Thread(m.tid)))
            .sum()
    }

    /// Stops and joins every thread; the first failure wins.
    pub fn finish(mut self) -> Result<(), MeasureError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut result = Ok(());
        for m in self.members.drain(..) {
            let why = match m.handle.join() {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => why,
                Err(panic) => panic_message(panic.as_ref()),
            };
            if result.is_ok() {
                result = Err(MeasureError::Thread { name: m.name, why });
            }
        }
        result
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for m in self.members.drain(..) {
            let _ = m.handle.join();
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked".to_owned()
    }
}
