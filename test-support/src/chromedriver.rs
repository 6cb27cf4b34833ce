//! A private chromedriver for the browser tests (the console's end-to-end test): started
//! on a free loopback port, killed when dropped. The browser it drives is Debian's
//! `chromium` (`scripts/chromium/start.sh` installs both); [`CHROME_ARGS`] are the flags
//! every test session passes.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How Chromium runs under test: headless, as root in a container (no sandbox), without
/// a GPU, without talking to Google's services, without the first-run dialogs.
pub const CHROME_ARGS: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
];

/// The Chromium binary Debian installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The requirement "chromium and chromedriver are installed", as [`crate::require`] takes
/// it.
pub fn chromium() -> (bool, &'static str) {
    (
        crate::tools(&["chromium", "chromedriver"]),
        "chromium and chromedriver (scripts/chromium/start.sh installs them)",
    )
}

/// A running chromedriver.
pub struct Driver {
    child: Child,
    /// Its WebDriver URL: `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits (up to 30 s) until it
    /// accepts connections.
    pub fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver: {e}"));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
