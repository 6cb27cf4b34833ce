//! No hang when the peer stops answering: a fake switch (a unix socket server in this
//! process) that accepts and then says nothing, or says HELLO and then nothing. Every
//! wait ends after the client's timeout, the connection is dropped, and later calls
//! fail at once with `Disconnected`. (Everything else is tested against the real Open
//! vSwitch in `ovs.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TempDir;
use kalki_openflow::{parse_flow, Client, Error};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

const TIMEOUT: Duration = Duration::from_millis(300);
/// Generous bound on how late a timeout may fire on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// A fake switch: accepts connections, sends `greeting` (if any), then reads and
/// discards everything and never answers.
fn silent_switch(dir: &TempDir, greeting: Option<Vec<u8>>) -> PathBuf {
    let path = dir.path().join("switch.mgmt");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let greeting = greeting.clone();
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    let _ = sock.write_all(&g).await;
                }
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    path
}

#[tokio::test]
async fn connect_times_out_without_a_hello() {
    let dir = TempDir::new("silent");
    let path = silent_switch(&dir, None);
    let start = Instant::now();
    let err = Client::connect(&path, TIMEOUT).await.err().unwrap();
    let took = start.elapsed();
    assert!(
        matches!(
            err,
            Error::Timeout {
                waiting_for: "the switch's HELLO",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_disconnect());
    assert!(took >= TIMEOUT && took < TIMEOUT + SLACK, "{took:?}");
}

#[tokio::test]
async fn every_request_times_out_then_reports_disconnected() {
    let dir = TempDir::new("mute");
    // OpenFlow 1.5 HELLO with a version bitmap holding 1.5 only.
    let hello = vec![6, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0, 8, 0, 0, 0, 0x40];
    let path = silent_switch(&dir, Some(hello));
    let flows = vec![parse_flow("table=1,priority=100,cookie=0x2,in_port=2 actions=drop").unwrap()];

    let mut c = Client::connect(&path, TIMEOUT).await.unwrap();
    let start = Instant::now();
    let err = c.swap(0x2, u64::MAX, &flows).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            err,
            Error::Timeout {
                waiting_for: "the bundle's barrier reply",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(took >= TIMEOUT && took < TIMEOUT + SLACK, "{took:?}");
    assert!(!c.is_connected());

    // Nothing is sent on a dropped connection: the answer is immediate.
    let start = Instant::now();
    let err = c.swap(0x2, u64::MAX, &flows).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(start.elapsed() < TIMEOUT);

    // Each kind of wait is bounded.
    for op in ["echo", "barrier", "add"] {
        c.reconnect().await.unwrap();
        let start = Instant::now();
        let err = match op {
            "echo" => c.echo().await.map(|_| ()),
            "barrier" => c.barrier().await,
            _ => c.add(&flows).await,
        }
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{op}: {err:?}");
        assert!(start.elapsed() < TIMEOUT + SLACK, "{op}");
        assert!(!c.is_connected());
    }
}
