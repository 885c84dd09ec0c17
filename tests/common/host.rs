//! Host programs and processes: one command runner ([`run`], [`run_ok`], [`output`]), one
//! way to start a long-running child with its log ([`spawn_logged`]), and one way to stop it
//! ([`stop_child`]).

use std::io::{Read, Write as _};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// PATH for the programs we start: Debian's binaries first (another, newer tool may come
/// first on the caller's PATH).
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs a host program (`ip`, `iptables`, ...); its success and stdout+stderr.
pub fn run(prog: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(prog)
        .args(args)
        .env("PATH", PATH)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Runs a host program, panicking (with its output) when it fails; its stdout.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = output(prog, args).unwrap_or_else(|e| panic!("{e}"));
    if !out.status.success() {
        panic!(
            "{prog} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to its end: (exit code, or -1 when a signal ended it; stdout; stderr).
pub fn code_out_err(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a host program, killed after 30 s; its whole output.
pub fn output(prog: &str, args: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new(prog);
    cmd.args(args).env("PATH", PATH);
    run_with_timeout(cmd, None, Duration::from_secs(30))
}

/// Starts `cmd` with stdin from /dev/null and stdout and stderr appended to `log`, as a
/// child that the kernel sends `signal` when the thread that started it ends
/// (PR_SET_PDEATHSIG): a test process killed before its guards drop leaves no etcd, plugin
/// or dockerd behind.
/// Start it on the test's own thread (a `#[tokio::test]` body is fine), not on a
/// short-lived helper thread. `what` names it in the panic when it cannot start.
pub fn spawn_logged(mut cmd: Command, log: &Path, signal: i32, what: &str) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the log file"))
        .stderr(file);
    // SAFETY: the closure runs in the child between fork and exec, and calls only prctl,
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"))
}

/// Runs `cmd` with `stdin` fed to it, killing it after `timeout`.
pub fn run_with_timeout(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {desc}: {e}"))?;
    let writer = child.stdin.take().map(|mut w| {
        let data = stdin.unwrap_or_default();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
                return Err(format!(
                    "{desc} did not finish within {timeout:?} (killed); stderr: {stderr}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait for {desc}: {e}")),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Sends `sig` to process `pid`: one the test started, or found by its command line.
pub fn signal_pid(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a wrong PID only
    // makes it fail.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Sends `sig` to `child` (not yet reaped, so its PID cannot belong to another process).
pub fn signal(child: &Child, sig: i32) -> bool {
    signal_pid(child.id() as i32, sig)
}

/// Sends `sig` to `pid` if it is still our child, then waits up to `grace`, then SIGKILLs.
pub fn stop_child(child: &mut Child, sig: i32, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    signal(child, sig);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "pid {} did not exit {grace:?} after signal {sig}: SIGKILL",
        child.id()
    );
    let _ = child.kill();
    child.wait().ok()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    tail(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}
