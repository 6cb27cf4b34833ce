//! Steady UDP traffic with sequence numbers, for the measurements: a sender in a device's
//! namespace and a receiver in the uplink host's. Both are this test binary run again
//! (`ip netns exec NS <test binary> udp_helper --exact --ignored`) with its role in the
//! environment, so nothing but the binary and iproute2 is needed. Each runs until a stop
//! file appears and then writes its counts, as JSON, to its output file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use crate::lab::Host;
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PORT: u16 = 9079;
/// A helper stops by itself after this long, stop file or not.
const LIMIT: Duration = Duration::from_secs(900);

/// The helper's side: called by the `udp_helper` test when `KALKI_E2E_ROLE` is set.
pub fn helper_main() {
    let Ok(role) = std::env::var("KALKI_E2E_ROLE") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("KALKI_E2E_DIR").unwrap());
    let stop = dir.join(format!("{role}.stop"));
    let out = dir.join(format!("{role}.json"));
    let result = match role.as_str() {
        "recv" => {
            let sock = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            std::fs::write(dir.join("recv.ready"), "").unwrap();
            let mut seen: Vec<bool> = Vec::new();
            let (mut received, mut dups) = (0u64, 0u64);
            let mut buf = [0u8; 2048];
            let mut stopping: Option<Instant> = None;
            let begun = Instant::now();
            loop {
                if stopping.is_none() && (stop.exists() || begun.elapsed() > LIMIT) {
                    stopping = Some(Instant::now());
                }
                if stopping.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
                    break;
                }
                let Ok(n) = sock.recv(&mut buf) else { continue };
                if n < 8 {
                    continue;
                }
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
                if seq >= seen.len() {
                    seen.resize(seq + 1, false);
                }
                received += 1;
                if seen[seq] {
                    dups += 1;
                }
                seen[seq] = true;
            }
            json!({"received": received, "unique": received - dups, "duplicates": dups})
        }
        "send" => {
            let to: String = std::env::var("KALKI_E2E_TO").unwrap();
            let rate: u64 = std::env::var("KALKI_E2E_RATE").unwrap().parse().unwrap();
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            let period = Duration::from_nanos(1_000_000_000 / rate);
            let start = Instant::now();
            let mut seq = 0u64;
            let mut errors = 0u64;
            let mut payload = [0u8; 64];
            while !(seq.is_multiple_of(64) && (stop.exists() || start.elapsed() > LIMIT)) {
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                if sock.send_to(&payload, (to.as_str(), PORT)).is_err() {
                    errors += 1;
                }
                seq += 1;
                let next = start + period * seq as u32;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
            json!({"sent": seq - errors, "send_errors": errors, "seconds": start.elapsed().as_secs_f64()})
        }
        other => panic!("unknown role {other}"),
    };
    std::fs::write(out, result.to_string()).unwrap();
}

/// One helper process in a namespace.
pub struct Helper {
    child: Child,
    role: &'static str,
    dir: PathBuf,
}

impl Helper {
    fn spawn(ns: &str, role: &'static str, dir: &Path, env: &[(&str, String)]) -> Helper {
        let exe = std::env::current_exe().unwrap();
        // No `timeout` wrapper: `ip netns exec` execs the binary, so the child is the
        // helper itself and killing it on drop ends it; it stops itself after LIMIT.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(exe)
            .args(["udp_helper", "--exact", "--ignored", "--test-threads=1"])
            .env("KALKI_E2E_ROLE", role)
            .env("KALKI_E2E_DIR", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let _ = std::fs::remove_file(dir.join(format!("{role}.stop")));
        let _ = std::fs::remove_file(dir.join(format!("{role}.json")));
        Helper {
            child: cmd.spawn().unwrap(),
            role,
            dir: dir.to_path_buf(),
        }
    }

    /// A receiver in the uplink host's namespace, ready when this returns.
    pub fn receiver(uplink: &Host, dir: &Path) -> Helper {
        let _ = std::fs::remove_file(dir.join("recv.ready"));
        let h = Helper::spawn(uplink.ns, "recv", dir, &[]);
        crate::lab::wait_for(Duration::from_secs(20), "the UDP receiver", || {
            dir.join("recv.ready").exists()
        });
        h
    }

    /// A sender in a device's namespace: `rate` datagrams a second to `to`.
    pub fn sender(device: &Host, to: &str, rate: u64, dir: &Path) -> Helper {
        Helper::spawn(
            device.ns,
            "send",
            dir,
            &[
                ("KALKI_E2E_TO", to.to_string()),
                ("KALKI_E2E_RATE", rate.to_string()),
            ],
        )
    }

    /// Stops the helper and returns its counts.
    pub fn finish(mut self) -> Value {
        std::fs::write(self.dir.join(format!("{}.stop", self.role)), "").unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the {} helper failed: {status}",
            self.role
        );
        let text = std::fs::read_to_string(self.dir.join(format!("{}.json", self.role)))
            .unwrap_or_else(|e| panic!("the {} helper wrote no result: {e}", self.role));
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
