//! Running the node's tools (`ovs-vsctl`, `ovs-ofctl`, `ip`, `ethtool`, `nsenter`) with a
//! deadline: a hung tool is killed and reported, never waited on forever.

use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {} ms; killed", .limit.as_millis())]
    Timeout { command: String, limit: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Runs `program args`, feeding `stdin` if given, and returns its output whatever its
/// exit status (the caller judges it). Killed after `limit`.
pub async fn output(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> Result<(String, Output), CmdError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let bytes = text.as_bytes().to_vec();
        // Written beside the reads, so a large input cannot deadlock on a full pipe.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok((command, out)),
        Ok(Err(source)) => Err(CmdError::Spawn {
            program: program.to_string(),
            source,
        }),
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => Err(CmdError::Timeout { command, limit }),
    }
}

/// Runs `program args` and returns its standard output; a non-zero exit is an error
/// carrying the tool's standard error.
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> Result<String, CmdError> {
    let (command, out) = output(program, args, stdin, limit).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CmdError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[tokio::test]
    async fn a_hung_tool_is_killed_at_the_deadline() {
        let started = std::time::Instant::now();
        let err = run("sleep", &["30"], None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CmdError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn failure_carries_stderr_and_stdin_is_fed() {
        let err = run(
            "sh",
            &["-c", "echo nope >&2; exit 3"],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let out = run("cat", &[], Some("fed\n"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out, "fed\n");
    }

    #[tokio::test]
    async fn a_missing_tool_is_a_spawn_error() {
        let err = run("kalki-no-such-tool", &[], None, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err}");
    }
}
