//! Running iptables: the xtables-lock wait and a hard deadline on every process.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::*;
use crate::error::{Error, Result};

/// How long an iptables command waits for the xtables lock (`-w`) before giving up.
pub const XTABLES_WAIT_SECS: &str = "5";
/// Past this, a firewall subprocess is killed: no caller waits on iptables for ever.
pub const SUBPROCESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `cmd` to completion, feeding it `input`, and kills it past [`SUBPROCESS_DEADLINE`].
/// Waiting (and feeding the input) happens on a thread of its own, so a child that blocks
/// never blocks the caller beyond the deadline.
pub(crate) fn output_within(cmd: Command, input: Option<String>) -> Result<std::process::Output> {
    output_within_deadline(cmd, input, SUBPROCESS_DEADLINE)
}

pub(super) fn output_within_deadline(
    mut cmd: Command,
    input: Option<String>,
    deadline: std::time::Duration,
) -> Result<std::process::Output> {
    let what = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::msg(format!("run {what}: {e}")))?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let (tx, rx) = std::sync::mpsc::channel();
    if let (Some(mut stdin), Some(input)) = (stdin, input) {
        // Fed on a thread of its own, while the output is read: a child that writes before
        // it has read all its input never deadlocks against us. A write error shows in the
        // exit status and stderr.
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.map_err(|e| Error::io(format!("wait for {what}"), e)),
        Err(_) => {
            // SAFETY: `pid` is our unreaped child (the waiting thread has not returned), so
            // the number cannot have been reused.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = rx.recv();
            Err(Error::Timeout {
                what: format!("{what} (killed; the xtables lock held too long?)"),
                after: deadline,
            })
        }
    }
}

pub(super) fn run(bin: &str, args: &[&str]) -> Result<std::process::Output> {
    // -w N: wait for the xtables lock (dockerd or firewalld may hold it), but not for ever.
    let mut cmd = Command::new(bin);
    cmd.args(["-w", XTABLES_WAIT_SECS]).args(args);
    output_within(cmd, None)
}

pub(super) fn restore(family: Family, input: &str) -> Result<()> {
    restore_in(backend(), family, input)
}

pub(super) fn restore_in(b: Backend, family: Family, input: &str) -> Result<()> {
    let mut cmd = Command::new(family.restore_bin_in(b));
    cmd.args(["-w", XTABLES_WAIT_SECS, "--noflush"]);
    let out = output_within(cmd, Some(input.to_string()))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "apply rules with {}: {}",
            family.restore_bin_in(b),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
