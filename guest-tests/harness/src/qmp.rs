//! A small QMP client (QEMU Machine Protocol, JSON over a Unix socket):
//! the greeting, `qmp_capabilities`, and commands with their answers.
//! Asynchronous events that arrive between answers are kept, in order.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received so far (`{"event": ...}` objects).
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to QEMU's QMP socket at `path` (waiting, bounded, until
    /// QEMU has created it) and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Qmp {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "QMP socket {} never accepted a connection: {e}",
                        path.display()
                    );
                    // Polling for QEMU to create its socket, with a deadline.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .expect("QMP read timeout");
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().expect("clone the QMP socket")),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = qmp.read();
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.execute("qmp_capabilities", json!({}));
        qmp
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading from QMP: {e}"));
        assert!(n > 0, "QEMU closed its QMP socket");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP JSON ({e}): {line}"))
    }

    /// Runs `command` with `arguments` and returns its `return` value;
    /// panics with QEMU's error if it failed.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let request = if arguments.as_object().is_some_and(|o| o.is_empty()) {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": arguments })
        };
        writeln!(self.writer, "{request}").expect("write to QMP");
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            panic!("QMP {command} failed: {v}");
        }
    }

    /// Polls `query-migrate` until the migration reached a final state
    /// (`completed`, `failed` or `cancelled`) and returns that answer.
    pub fn wait_migration(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.execute("query-migrate", json!({}));
            let status = m["status"].as_str().unwrap_or("none");
            if matches!(status, "completed" | "failed" | "cancelled") {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "migration still {status} after {timeout:?}: {m}"
            );
            // Polling QEMU's state, with a deadline.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
