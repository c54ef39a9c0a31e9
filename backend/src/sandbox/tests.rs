//! The filters as the kernel applies them, in a child process: this test
//! binary runs itself again with [`CHILD`] set, and the child installs a
//! kind's filter on its test thread, makes an allowed call, then a
//! forbidden one. The parent reads what the child printed and how it
//! ended.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use seccompiler::SeccompAction;

use super::*;

/// The environment variable that makes [`child`] act: `KIND MODE CALL`.
const CHILD: &str = "ZCNET_SECCOMP_CHILD";

fn kind_named(name: &str) -> Kind {
    match name {
        "main" => Kind::Main,
        "frontend" => Kind::Frontend,
        "worker" => Kind::Worker,
        "metrics" => Kind::Metrics,
        "control" => Kind::Control,
        other => panic!("no kind {other}"),
    }
}

/// Runs in the child only (the parent runs it with `--ignored`).
#[test]
#[ignore = "run in a child process by the other tests of this module"]
fn child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut words = spec.split_whitespace();
    let kind = kind_named(words.next().unwrap());
    let mode = match words.next().unwrap() {
        "enforce" => SeccompMode::Enforce,
        "log" => SeccompMode::Log,
        other => panic!("no mode {other}"),
    };
    let call = words.next().unwrap();
    init(mode).unwrap();
    if kind == Kind::Main {
        lock_down_main().unwrap();
    } else {
        enter(kind);
    }
    assert_eq!(installed(), Some(kind));
    // Allowed on every kind: an eventfd is not needed, a pipe is not
    // made; write to stderr and read the clock.
    let t = std::time::Instant::now();
    eprintln!(
        "child: filter installed, allowed calls work ({:?})",
        t.elapsed()
    );
    match call {
        // Allowed on a worker: a tap's TUNSETOFFLOAD is not, FIONREAD is.
        "fionread" => {
            let fd = eventfd();
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer, which
            // points at `n`; the fd is open (an eventfd, which refuses
            // the request with an error, returned and ignored).
            let _ = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
            println!("CHILD-RESULT fionread returned");
        }
        "tunsetoffload" => {
            let fd = eventfd();
            // SAFETY: TUNSETOFFLOAD takes an int by value; on an eventfd
            // it fails with an error (if it is allowed at all).
            let _ = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, 0) };
            println!("CHILD-RESULT tunsetoffload returned");
        }
        "ptrace" => {
            // SAFETY: PTRACE_ATTACH to a pid above pid_max's limit (4M)
            // finds no process (ESRCH), if it is allowed at all; no
            // pointer is passed.
            let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, i32::MAX, 0, 0) };
            println!("CHILD-RESULT ptrace returned {r}");
        }
        "execve" => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: a NUL-terminated path and NULL-terminated argument
            // and environment arrays that outlive the call; if the exec
            // succeeded the test would fail on the missing output.
            let r = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            println!("CHILD-RESULT execve returned {r}");
        }
        "fork" => {
            // A fork as a raw clone: glibc's fork() blocks every signal
            // around the call, and a denial then kills with SIGSYS before
            // the handler can name it.
            // SAFETY: clone without CLONE_VM or a new stack is a fork: the
            // child runs on a copy of this stack and only calls `_exit`.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            if pid == 0 {
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(0) };
            }
            println!("CHILD-RESULT fork returned {pid}");
        }
        "thread" => {
            let r = std::thread::spawn(|| 7).join().unwrap();
            println!("CHILD-RESULT thread returned {r}");
        }
        other => panic!("no call {other}"),
    }
}

fn eventfd() -> libc::c_int {
    // SAFETY: eventfd2 takes two integers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    fd
}

/// Runs [`child`] in a child process with `KIND MODE CALL`.
fn run_child(kind: &str, mode: &str, call: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{kind} {mode} {call}"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The child was ended by the SIGSYS handler for `name`.
fn assert_denied(o: &Output, kind: Kind, name: &str) {
    let (out, err) = text(o);
    assert_eq!(
        o.status.code(),
        Some(DENIED_EXIT_STATUS),
        "status {:?}\nstdout: {out}\nstderr: {err}",
        o.status
    );
    assert!(
        err.contains("child: filter installed, allowed calls work"),
        "{err}"
    );
    let line = format!(
        "zcnet: seccomp: the {} thread made system call {name} (number ",
        kind.name()
    );
    assert!(err.contains(&line), "no {line:?} in stderr: {err}");
    assert!(err.contains("--seccomp log"), "{err}");
    assert!(!out.contains("CHILD-RESULT"), "the call returned: {out}");
}

/// The child's call returned.
fn assert_allowed(o: &Output, result: &str) {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {out}\nstderr: {err}",
        o.status
    );
    assert!(
        out.contains(result),
        "no {result:?} in {out}\nstderr: {err}"
    );
    assert!(!err.contains("zcnet: seccomp:"), "{err}");
}

#[test]
fn every_kind_compiles_for_enforce_and_log() {
    for kind in [
        Kind::Main,
        Kind::Frontend,
        Kind::Worker,
        Kind::Metrics,
        Kind::Control,
    ] {
        for action in [SeccompAction::Trap, SeccompAction::Log] {
            let program = compile(kind, action).unwrap();
            assert!(!program.is_empty(), "{kind:?}");
            // The kernel takes at most BPF_MAXINSNS (4096) instructions.
            assert!(program.len() < 4096, "{kind:?}: {}", program.len());
        }
    }
}

#[test]
fn ptrace_and_exec_are_denied_to_every_kind_with_the_call_named() {
    for kind in ["main", "frontend", "worker", "metrics", "control"] {
        assert_denied(
            &run_child(kind, "enforce", "ptrace"),
            kind_named(kind),
            "ptrace",
        );
    }
    assert_denied(
        &run_child("worker", "enforce", "execve"),
        Kind::Worker,
        "execve",
    );
}

#[test]
fn a_worker_may_ask_fionread_but_not_configure_a_tap() {
    assert_allowed(
        &run_child("worker", "enforce", "fionread"),
        "CHILD-RESULT fionread returned",
    );
    assert_denied(
        &run_child("worker", "enforce", "tunsetoffload"),
        Kind::Worker,
        "ioctl",
    );
    assert_allowed(
        &run_child("frontend", "enforce", "tunsetoffload"),
        "CHILD-RESULT tunsetoffload returned",
    );
}

#[test]
fn the_main_thread_starts_threads_but_cannot_fork() {
    assert_allowed(
        &run_child("main", "enforce", "thread"),
        "CHILD-RESULT thread returned 7",
    );
    assert_denied(&run_child("main", "enforce", "fork"), Kind::Main, "clone");
    // A worker may start no thread. glibc blocks every signal around the
    // clone of pthread_create, so the kernel cannot deliver the SIGSYS to
    // the handler and kills the process with it (the kernel's log still
    // names the call).
    let o = run_child("worker", "enforce", "thread");
    assert_eq!(o.status.signal(), Some(libc::SIGSYS), "{:?}", text(&o));
    assert!(!text(&o).0.contains("CHILD-RESULT"), "{:?}", text(&o));
}

#[test]
fn log_mode_lets_a_forbidden_call_through() {
    assert_allowed(
        &run_child("worker", "log", "ptrace"),
        "CHILD-RESULT ptrace returned",
    );
}
