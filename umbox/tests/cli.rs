//! The real binary's command line and its start: usage errors exit 2 with a message and
//! nothing on stdout, missing interfaces exit 1 after the bounded wait, SIGTERM during the
//! wait exits 0, auth-proxy without usable credentials exits 1 at once (never a password
//! in the message). Needs no root and no network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kalki-umbox");

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("KALKI_INTERFACES")
        .env_remove("LOG_LEVEL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for the child at most `limit`, killing it past that.
fn finish(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = finish(command(args, env).spawn().unwrap(), Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2_and_say_why() {
    for (args, says) in [
        (&["sniffer", "--scan-port", "5"][..], "--scan-port"),
        (&["nmap"][..], "nmap"),
        (&["sniffer", "--stats", "yes"][..], "yes"),
        (&["anti-dos", "--max-rate", "0"][..], "0"),
        (&["ip-block"][..], "--addresses"),
        (&["ip-block", "--addresses", "10.0.0.300"][..], "10.0.0.300"),
        (&[][..], "Usage"),
    ] {
        let (code, stdout, stderr) = run(args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: stdout {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_environment_exits_2() {
    for (env, says) in [
        (("KALKI_INTERFACES", "tap"), "inline function"),
        (("KALKI_INTERFACES", "a,b,c"), "expected one interface"),
        (("LOG_LEVEL", "loud"), "LOG_LEVEL"),
        (
            ("KALKI_INTERFACE_TIMEOUT_MS", "soon"),
            "KALKI_INTERFACE_TIMEOUT_MS",
        ),
    ] {
        let (code, stdout, stderr) = run(&["xmas-block"], &[env]);
        assert_eq!(code, 2, "{env:?}: {stderr}");
        assert!(stdout.is_empty());
        assert!(stderr.contains(says), "{env:?}: {stderr}");
    }
}

#[test]
fn help_lists_functions_environment_and_exit_codes() {
    let (code, stdout, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for s in [
        "sniffer",
        "xmas-block",
        "KALKI_INTERFACES",
        "Exit codes",
        "SIGUSR1",
    ] {
        assert!(stdout.contains(s), "--help lacks {s}: {stdout}");
    }
    let (code, stdout, _) = run(&["brute-force", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--compromise-threshold"));
}

#[test]
fn missing_interfaces_fail_after_the_bounded_wait() {
    let started = Instant::now();
    let (code, stdout, stderr) = run(
        &["sniffer"],
        &[
            ("KALKI_INTERFACES", "kalkinosuch0"),
            ("KALKI_INTERFACE_TIMEOUT_MS", "400"),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(!stdout.contains("ready"), "{stdout}");
    assert!(
        stderr.contains("not ready after 400 ms") && stderr.contains("missing: kalkinosuch0"),
        "{stderr}"
    );
}

#[test]
fn sigterm_while_waiting_exits_0() {
    let child = command(
        &["xmas-block"],
        &[
            ("KALKI_INTERFACES", "kalkinosuch1,kalkinosuch2"),
            ("KALKI_INTERFACE_TIMEOUT_MS", "30000"),
        ],
    )
    .spawn()
    .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(300));
    kill(pid, Signal::SIGTERM).unwrap();
    let out = finish(child, Duration::from_secs(5));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn auth_proxy_without_usable_credentials_exits_1_before_anything() {
    let dir = std::env::temp_dir().join(format!("kalki-umbox-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let missing = dir.join("missing").display().to_string();
    let empty = file("empty", b"# nobody yet\n\n");
    let bad = file("bad", b"owner:S3cret!\nhunter2\n");
    let binary = file("binary", b"owner:\xff\xfe\n");
    let good = file("good", b"owner:S3cret!\n");
    for (path, says) in [
        (&missing, "cannot read the proxy credentials"),
        (&empty, "no `user:password` entry"),
        (&bad, "line 2 is not `user:password`"),
        (&binary, "not UTF-8"),
        (&dir.display().to_string(), "cannot read"),
    ] {
        let started = Instant::now();
        let (code, stdout, stderr) = run(
            &["auth-proxy", "--realm", "lab"],
            &[
                ("KALKI_PROXY_CREDENTIALS", path),
                ("KALKI_INTERFACES", "kalkinosuch3,kalkinosuch4"),
                ("KALKI_INTERFACE_TIMEOUT_MS", "30000"),
            ],
        );
        assert_eq!(code, 1, "{path}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(stdout.is_empty(), "{path}: {stdout}");
        assert!(
            stderr.contains(says) && stderr.contains(path.as_str()),
            "{stderr}"
        );
        assert!(
            !stderr.contains("S3cret") && !stderr.contains("hunter2"),
            "{stderr}"
        );
    }
    // A usable file: on to the wait for the interfaces.
    let (code, stdout, stderr) = run(
        &["auth-proxy", "--block"],
        &[
            ("KALKI_PROXY_CREDENTIALS", &good),
            ("KALKI_INTERFACES", "kalkinosuch3,kalkinosuch4"),
            ("KALKI_INTERFACE_TIMEOUT_MS", "200"),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("1 proxy credential(s)") && stderr.contains("not ready after 200 ms"),
        "{stderr}"
    );
    assert!(!stderr.contains("S3cret"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
