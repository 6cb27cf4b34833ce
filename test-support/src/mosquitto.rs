//! Private MQTT brokers for the live tests: a real `mosquitto` (2.0.11 on Debian 12) on a
//! free loopback port, with its own config, password file, persistence, log and (on
//! request) TLS certificates in a temp dir, and the real `mosquitto_pub`/`mosquitto_sub`
//! to talk to it. `scripts/mosquitto/start.sh` installs them; [`mosquitto`] is the
//! requirement for [`crate::require`].
//!
//! Every broker refuses anonymous clients and knows one user with a random password.
//! The password never appears on a command line: mosquitto gets it hashed in its password
//! file (`mosquitto_passwd -U` hashes a plaintext `user:password` file in place), the
//! clients read it from their default-options file (`$XDG_CONFIG_HOME/mosquitto_pub` and
//! `$XDG_CONFIG_HOME/mosquitto_sub`, one `-option value` per line; `XDG_CONFIG_HOME` is a
//! directory of the broker's, mode 0700), and the shim reads it from
//! [`Broker::password_file`].
//!
//! Everything runs under a deadline: the tools under `timeout`, a broker for at most
//! [`BROKER_LIFETIME_SECS`] (a test process that dies leaves no broker behind for long),
//! a subscriber for at most [`SUBSCRIBER_LIFETIME_SECS`] (`mosquitto_sub -W`).
//!
//! Errors are `Err(String)` with what the tool or the broker's log said; tests turn them
//! into failures.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a broker may take to accept connections after (re)starting.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a [`Subscriber`] may take to be subscribed.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a broker runs (`timeout` ends it, with SIGTERM, then SIGKILL 5 s later).
pub const BROKER_LIFETIME_SECS: u32 = 900;
/// The longest a [`Subscriber`]'s `mosquitto_sub` runs (its `-W`).
pub const SUBSCRIBER_LIFETIME_SECS: u32 = 600;
/// Seconds `mosquitto_pub`, `mosquitto_passwd` and `openssl` may take.
const TOOL_TIMEOUT_SECS: &str = "20";
/// How long a broker may take to exit after SIGTERM (it saves its persistence first).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The one user every broker knows.
const USERNAME: &str = "kalki";

/// The requirement "mosquitto and its clients are installed", as [`crate::require`]
/// takes it.
pub fn mosquitto() -> (bool, &'static str) {
    (
        [
            "mosquitto",
            "mosquitto_pub",
            "mosquitto_sub",
            "mosquitto_passwd",
            "openssl",
        ]
        .iter()
        .all(|t| binary(t).is_some()),
        "mosquitto, mosquitto_pub, mosquitto_sub, mosquitto_passwd and openssl \
         (scripts/mosquitto/start.sh installs them)",
    )
}

/// A tool's path: on `PATH`, or in `/usr/sbin` (where Debian puts `mosquitto`, and which a
/// non-root `PATH` often lacks).
fn binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn need(name: &str) -> Result<PathBuf, String> {
    binary(name).ok_or_else(|| format!("{name} not found (scripts/mosquitto/start.sh installs it)"))
}

/// Runs `program` under `timeout` with extra environment variables; its standard
/// output, or why it failed.
fn exec(program: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Result<String, String> {
    let out = Command::new("timeout")
        .arg(TOOL_TIMEOUT_SECS)
        .arg(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {} failed ({}{}): {}",
            program.display(),
            args.join(" "),
            out.status,
            if out.status.code() == Some(124) {
                ", timed out"
            } else {
                ""
            },
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Random hex from the kernel: passwords, directory names.
pub(crate) fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn mkdir_private(path: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// A loopback TCP port nobody listens on now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// How a broker is set up.
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// The listener speaks TLS (a server certificate for `localhost` and `127.0.0.1`,
    /// signed by a CA generated for this broker: [`Broker::ca_file`]).
    pub tls: bool,
    /// No limit on a client's in-flight and queued QoS 1 messages (mosquitto's defaults:
    /// 20 and 1000, beyond which it drops): a burst then reaches the client whole.
    pub unlimited_queues: bool,
}

/// A private `mosquitto`; stopped, and its directory removed, when dropped.
#[derive(Debug)]
pub struct Broker {
    dir: PathBuf,
    port: u16,
    tls: bool,
    unlimited_queues: bool,
    password: String,
    password_file: PathBuf,
    ca_file: Option<PathBuf>,
    /// `XDG_CONFIG_HOME` of the clients that log in with the broker's password.
    client_config: PathBuf,
    /// `timeout BROKER_LIFETIME_SECS mosquitto -c ...`, while running.
    child: Option<Child>,
    /// Numbers the clients' option directories for other passwords.
    clients: AtomicU32,
}

impl Broker {
    /// Starts a broker and waits until it accepts connections.
    pub fn start(options: BrokerOptions) -> Result<Broker, String> {
        let mosquitto = need("mosquitto")?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "kalki-mosquitto-{}-{stamp}-{}",
            std::process::id(),
            random_hex(4)?
        ));
        mkdir_private(&dir)?;
        // From here on `Drop` cleans up whatever the rest leaves half done.
        let mut broker = Broker {
            password_file: dir.join("password"),
            client_config: dir.join("clients"),
            dir,
            port: 0,
            tls: options.tls,
            unlimited_queues: options.unlimited_queues,
            password: random_hex(16)?,
            ca_file: None,
            child: None,
            clients: AtomicU32::new(0),
        };
        broker.prepare()?;
        // The port is free when picked but may be taken before mosquitto binds it: then
        // another one is tried.
        let mut last = String::new();
        for _ in 0..3 {
            broker.port = free_port()?;
            match broker.launch(&mosquitto) {
                Ok(()) => return Ok(broker),
                Err(e) if broker.log().contains("Address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Writes the password files, the clients' options and (for TLS) the certificates.
    fn prepare(&mut self) -> Result<(), String> {
        let passwd = self.dir.join("passwd");
        write_private(&passwd, &format!("{USERNAME}:{}\n", self.password))?;
        exec(
            &need("mosquitto_passwd")?,
            &["-U", &passwd.to_string_lossy()],
            &[],
        )?;
        let hashed = fs::read_to_string(&passwd)
            .map_err(|e| format!("cannot read {}: {e}", passwd.display()))?;
        if hashed.contains(&self.password) || !hashed.starts_with(&format!("{USERNAME}:$")) {
            return Err(format!(
                "mosquitto_passwd -U did not hash {}",
                passwd.display()
            ));
        }
        // Only the password, no newline: what the shim's --mqtt-password-file reads.
        write_private(&self.password_file, &self.password)?;
        write_client_options(&self.client_config, &self.password)?;
        fs::create_dir_all(self.dir.join("data"))
            .map_err(|e| format!("cannot create the persistence directory: {e}"))?;
        if self.tls {
            self.ca_file = Some(make_certificates(&self.dir)?);
        }
        Ok(())
    }

    /// Writes the config for the current port, starts mosquitto and waits until it
    /// accepts connections.
    fn launch(&mut self, mosquitto: &Path) -> Result<(), String> {
        let dir = &self.dir;
        let mut conf = format!(
            "# A private broker of one test (kalki-test-support, src/mosquitto.rs).\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             password_file {passwd}\n\
             persistence true\n\
             persistence_location {data}\n\
             log_dest file {log}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             log_type subscribe\nlog_type unsubscribe\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\n",
            port = self.port,
            passwd = dir.join("passwd").display(),
            data = dir.join("data").display(),
            log = dir.join("mosquitto.log").display(),
        );
        if self.unlimited_queues {
            conf.push_str("max_inflight_messages 0\nmax_queued_messages 0\n");
        }
        if self.tls {
            conf.push_str(&format!(
                "certfile {}\nkeyfile {}\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            ));
        }
        if crate::root() {
            // As root, mosquitto drops to the user `mosquitto`, which cannot write the log
            // or the persistence in this (root's, 0700) directory.
            conf.push_str("user root\n");
        }
        let conf_file = dir.join("mosquitto.conf");
        write_private(&conf_file, &conf)?;
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.stderr"))
            .map_err(|e| format!("cannot open the broker's stderr file: {e}"))?;
        let stdout = stderr
            .try_clone()
            .map_err(|e| format!("cannot open the broker's stderr file: {e}"))?;
        // SIGTERM to `timeout` is passed on to mosquitto (which then saves its
        // persistence), and `-k 5` follows it with SIGKILL if mosquitto lingers: once
        // `timeout` has been sent SIGTERM, the broker is gone within 5 s. --foreground
        // keeps both in the test's process group, so a Ctrl-C ends them with the test.
        let runs = self.runs_logged();
        let child = Command::new("timeout")
            .args(["--foreground", "-k", "5", &BROKER_LIFETIME_SECS.to_string()])
            .arg(mosquitto)
            .arg("-c")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start mosquitto: {e}"))?;
        self.child = Some(child);
        self.wait_ready(runs)
    }

    /// How many times the log says a broker came up (`mosquitto version 2.0.11 running`,
    /// written once its listener is open).
    fn runs_logged(&self) -> usize {
        fs::read_to_string(self.dir.join("mosquitto.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(": mosquitto version ") && l.ends_with(" running"))
            .count()
    }

    /// Waits until this broker is up: it logged that it runs (`runs` is the count before
    /// it started; another process answering on the port must not pass for it) and
    /// accepts TCP connections. Or says why it is not.
    fn wait_ready(&mut self, runs: usize) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                None => Some("is not running".to_string()),
                Some(Ok(Some(status))) => Some(format!("exited ({status})")),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some(format!("cannot be waited for: {e}")),
            };
            if let Some(why) = exited {
                self.child = None;
                return Err(format!(
                    "mosquitto on port {} {why}; its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            if self.runs_logged() > runs
                && TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.stop();
                return Err(format!(
                    "mosquitto did not accept connections on port {} within {READY_TIMEOUT:?}; \
                     its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker with SIGTERM (it saves its persistence) and waits for it to exit
    /// (SIGKILL after 5 s). Nothing to do if it is not running.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // The child is not reaped before it is waited for, so its pid is still its own.
        let _ = Command::new("timeout")
            .args(["5", "sh", "-c", &format!("kill -TERM {}", child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("cannot wait for mosquitto: {e}")),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "mosquitto did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed"
        ))
    }

    /// Stops the broker (if it runs) and starts it again on the same port with the same
    /// config, password and persistence; returns once it accepts connections.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop()?;
        let mosquitto = need("mosquitto")?;
        self.launch(&mosquitto)
    }

    /// Whether the broker process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The loopback TCP port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host clients should name: `localhost` for TLS (the name the certificate is
    /// checked against; it also holds `127.0.0.1`), else `127.0.0.1`. The broker listens on
    /// 127.0.0.1 only, so a client that resolves `localhost` to `::1` first must fall
    /// back to `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        if self.tls {
            "localhost"
        } else {
            "127.0.0.1"
        }
    }

    /// `mqtt://127.0.0.1:PORT`, or `mqtts://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host(), self.port)
    }

    /// Whether the listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The one user the broker accepts.
    pub fn username(&self) -> &str {
        USERNAME
    }

    /// That user's password (random per broker). Hand it to a program through
    /// [`Broker::password_file`], never on its command line.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A file (mode 0600) holding only the password, without a newline.
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// The CA certificate (PEM) that signed the TLS broker's certificate; `None` without
    /// TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The broker's directory: config, password files, certificates, persistence
    /// (`data/`), log. Removed when the broker is dropped.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's log so far (with anything it wrote to standard error, such as its
    /// warning about running as root); empty if it cannot be read.
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        let stderr = fs::read_to_string(self.dir.join("mosquitto.stderr")).unwrap_or_default();
        if !stderr.trim().is_empty() {
            log.push_str("-- standard error --\n");
            log.push_str(&stderr);
        }
        log
    }

    /// Publishes with `mosquitto_pub`, as the broker's user; `Ok` once it has been
    /// delivered to the broker (acknowledged, for QoS 1 and 2).
    pub fn publish(&self, topic: &str, payload: &str, qos: u8, retain: bool) -> Result<(), String> {
        self.publish_with(&ClientOptions::default(), topic, payload, qos, retain)
    }

    /// [`Broker::publish`] with other client options (a client id, another password, ...).
    pub fn publish_with(
        &self,
        client: &ClientOptions,
        topic: &str,
        payload: &str,
        qos: u8,
        retain: bool,
    ) -> Result<(), String> {
        let pubber = need("mosquitto_pub")?;
        let config = self.client_config_for(client)?;
        let mut args = self.client_args(client)?;
        args.extend(["-t".into(), topic.into(), "-q".into(), qos.to_string()]);
        if payload.is_empty() {
            args.push("-n".into());
        } else {
            args.extend(["-m".into(), payload.into()]);
        }
        if retain {
            args.push("-r".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        exec(&pubber, &args, &[("XDG_CONFIG_HOME", &config)])
            .map(drop)
            .map_err(|e| format!("{e}\nbroker log:\n{}", self.log()))
    }

    /// Publishes every line of `lines` as one message on `topic`, as fast as one
    /// `mosquitto_pub -l` connection sends them (a burst), as the broker's user.
    pub fn publish_lines(&self, topic: &str, lines: &str, qos: u8) -> Result<(), String> {
        use std::io::Write as _;
        let pubber = need("mosquitto_pub")?;
        let config = self.client_config_for(&ClientOptions::default())?;
        let mut args = self.client_args(&ClientOptions::default())?;
        args.extend([
            "-t".into(),
            topic.into(),
            "-q".into(),
            qos.to_string(),
            "-l".into(),
        ]);
        let mut child = Command::new("timeout")
            .arg(TOOL_TIMEOUT_SECS)
            .arg(&pubber)
            .args(&args)
            .env("XDG_CONFIG_HOME", &config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", pubber.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(lines.as_bytes())
                .map_err(|e| format!("mosquitto_pub -l: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("mosquitto_pub -l: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "mosquitto_pub -l failed ({}): {}\nbroker log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log()
            ))
        }
    }

    /// Subscribes to `topic` (a filter; wildcards allowed) with `mosquitto_sub` in the
    /// background, as the broker's user, and returns once the broker acknowledged the
    /// subscription.
    pub fn subscribe(&self, topic: &str, qos: u8) -> Result<Subscriber, String> {
        self.subscribe_with(&ClientOptions::default(), topic, qos)
    }

    /// [`Broker::subscribe`] with other client options (a persistent session, another
    /// password, ...).
    pub fn subscribe_with(
        &self,
        client: &ClientOptions,
        topic: &str,
        qos: u8,
    ) -> Result<Subscriber, String> {
        let stdbuf = need("stdbuf")?;
        let subber = need("mosquitto_sub")?;
        let config = self.client_config_for(client)?;
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        let stderr_path = self.dir.join(format!("sub-{n}.stderr"));
        let stderr = File::create(&stderr_path)
            .map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let mut args = self.client_args(client)?;
        // -d: the debug lines say when the subscription is acknowledged; stdbuf: line by
        // line, because mosquitto_sub does not flush them into a pipe.
        args.extend(["-d", "-v", "-W"].map(String::from));
        args.push(SUBSCRIBER_LIFETIME_SECS.to_string());
        args.extend(["-t".into(), topic.into(), "-q".into(), qos.to_string()]);
        let mut child = Command::new(stdbuf)
            .arg("-oL")
            .arg(subber)
            .args(&args)
            .env("XDG_CONFIG_HOME", &config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start mosquitto_sub: {e}"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut sub = Subscriber {
            child,
            lines: rx,
            messages: Vec::new(),
            debug: Vec::new(),
            stderr: stderr_path,
        };
        sub.wait_subscribed()
            .map_err(|e| format!("{e}\nbroker log:\n{}", self.log()))?;
        Ok(sub)
    }

    /// Host, port, TLS and session arguments (never the password).
    fn client_args(&self, client: &ClientOptions) -> Result<Vec<String>, String> {
        let mut args = vec![
            "-h".to_string(),
            self.host().to_string(),
            "-p".to_string(),
            self.port.to_string(),
        ];
        match (client.tls, &self.ca_file) {
            (ClientTls::Auto, Some(ca)) => {
                args.push("--cafile".into());
                args.push(ca.to_str().ok_or("the CA file's path is not UTF-8")?.into());
            }
            (ClientTls::Auto, None) | (ClientTls::Off, _) => {}
            (ClientTls::OsCerts, _) => args.push("--tls-use-os-certs".into()),
        }
        if let Some(id) = &client.id {
            args.push("-i".into());
            args.push(id.clone());
        }
        if client.persistent {
            if client.id.is_none() {
                return Err("a persistent session (-c) needs a client id".into());
            }
            args.push("-c".into());
        }
        Ok(args)
    }

    /// The `XDG_CONFIG_HOME` whose option files log in as the client asks: the broker's
    /// own, or a new one for another password.
    fn client_config_for(&self, client: &ClientOptions) -> Result<PathBuf, String> {
        let Some(password) = &client.password else {
            return Ok(self.client_config.clone());
        };
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("clients-{n}"));
        write_client_options(&dir, password)?;
        Ok(dir)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Not SIGKILL: that would end `timeout` and leave mosquitto running.
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The default-options files of mosquitto_pub and mosquitto_sub in `dir` (created, 0700):
/// the user and password, one `-option value` per line; the value is the rest of the
/// line, so it may hold spaces but no newline.
fn write_client_options(dir: &Path, password: &str) -> Result<(), String> {
    if password.contains(['\n', '\r']) {
        return Err("a password for mosquitto_pub/sub cannot hold a newline".into());
    }
    mkdir_private(dir)?;
    let options = format!("-u {USERNAME}\n-P {password}\n");
    write_private(&dir.join("mosquitto_pub"), &options)?;
    write_private(&dir.join("mosquitto_sub"), &options)
}

/// A CA and a server certificate for `localhost` and `127.0.0.1` signed by it (P-256,
/// SHA-256, X.509 v3 with the extensions rustls/webpki insist on), written to `dir`;
/// the CA certificate's path.
fn make_certificates(dir: &Path) -> Result<PathBuf, String> {
    let openssl = need("openssl")?;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (ca_key, ca_crt) = (path("ca.key"), path("ca.crt"));
    let (key, csr, crt, ext) = (
        path("server.key"),
        path("server.csr"),
        path("server.crt"),
        path("server.ext"),
    );
    // Fixed arguments (no spaces in them), then options with a path.
    let openssl = |fixed: &str, paths: &[(&str, &str)]| {
        let mut args: Vec<&str> = fixed.split_whitespace().collect();
        args.extend(paths.iter().flat_map(|(flag, path)| [*flag, *path]));
        exec(&openssl, &args, &[])
    };
    let p256 = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc";
    openssl(
        &format!(
            "req -x509 {p256} -days 30 -sha256 -subj /CN=kalki-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
        &[("-keyout", &ca_key), ("-out", &ca_crt)],
    )?;
    openssl(
        &format!("req -new {p256} -subj /CN=localhost"),
        &[("-keyout", &key), ("-out", &csr)],
    )?;
    write_private(
        Path::new(&ext),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    openssl(
        "x509 -req -CAcreateserial -days 30 -sha256",
        &[
            ("-in", &csr),
            ("-CA", &ca_crt),
            ("-CAkey", &ca_key),
            ("-out", &crt),
            ("-extfile", &ext),
        ],
    )?;
    Ok(PathBuf::from(ca_crt))
}

/// How `mosquitto_pub`/`mosquitto_sub` treat TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientTls {
    /// TLS with `--cafile` (the broker's CA) on a TLS broker; plain TCP on a plain one.
    #[default]
    Auto,
    /// TLS trusting only the system's CAs (`--tls-use-os-certs`), which do not know the
    /// test CA: the handshake must fail.
    OsCerts,
    /// No TLS options at all: plain MQTT, which a TLS listener refuses.
    Off,
}

/// How a `mosquitto_pub`/`mosquitto_sub` client connects; the default logs in as the
/// broker's user with a clean session.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// The client id (`-i`); a generated one if `None`.
    pub id: Option<String>,
    /// Keep the session while disconnected (`-c`, clean session off; MQTT 3.1.1). Needs
    /// an `id`.
    pub persistent: bool,
    /// Log in with this password instead of the broker's (still through the options
    /// file, never on the command line).
    pub password: Option<String>,
    /// TLS handling.
    pub tls: ClientTls,
}

/// A `mosquitto_sub -v` running in the background; killed when dropped (a persistent
/// session then stays on the broker, as for a client that went away).
#[derive(Debug)]
pub struct Subscriber {
    child: Child,
    lines: Receiver<String>,
    /// `TOPIC PAYLOAD` lines received so far.
    messages: Vec<String>,
    /// mosquitto_sub's `-d` lines.
    debug: Vec<String>,
    stderr: PathBuf,
}

impl Subscriber {
    /// Sorts one line of output: a `-d` line (`Client ...`, `Subscribed (mid: ...`), or a
    /// message (`TOPIC PAYLOAD`; so a message on the topic `Client` would be taken for a
    /// debug line).
    fn take(&mut self, line: String) {
        if line.starts_with("Client ") || line.starts_with("Subscribed (mid") {
            self.debug.push(line);
        } else {
            self.messages.push(line);
        }
    }

    /// Takes what has arrived without waiting; whether the process still writes.
    fn drain(&mut self) -> bool {
        loop {
            match self.lines.try_recv() {
                Ok(line) => self.take(line),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn wait_subscribed(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        loop {
            if let Some(granted) = self
                .debug
                .iter()
                .find_map(|l| l.strip_prefix("Subscribed (mid: "))
            {
                // "1): 0": the QoS granted per topic, 128 for a refusal.
                return if granted.split(':').nth(1).map(str::trim) == Some("128") {
                    Err(format!(
                        "the broker refused the subscription\n{}",
                        self.report()
                    ))
                } else {
                    Ok(())
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.take(line),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "mosquitto_sub was not subscribed within {SUBSCRIBE_TIMEOUT:?}\n{}",
                        self.report()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    return Err(format!(
                        "mosquitto_sub ended before it was subscribed\n{}",
                        self.report()
                    ));
                }
            }
        }
    }

    /// What mosquitto_sub said, for error messages.
    fn report(&self) -> String {
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "mosquitto_sub output:\n{}\nmessages: {:?}\nstandard error: {}",
            self.debug.join("\n"),
            self.messages,
            stderr.trim()
        )
    }

    /// Waits up to `timeout` for the message `payload` on `topic` (a line `TOPIC
    /// PAYLOAD`), received since the subscriber started.
    pub fn wait_for(
        &mut self,
        topic: &str,
        payload: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let want = format!("{topic} {payload}");
        let deadline = Instant::now() + timeout;
        loop {
            if self.messages.contains(&want) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.take(line),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no message `{want}` within {timeout:?}\n{}",
                        self.report()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "mosquitto_sub ended without the message `{want}`\n{}",
                        self.report()
                    ))
                }
            }
        }
    }

    /// The messages received so far, as `TOPIC PAYLOAD` lines, in order.
    pub fn messages(&mut self) -> &[String] {
        self.drain();
        &self.messages
    }

    /// Whether `mosquitto_sub` still runs (it ends, for one, when its login is refused).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends `mosquitto_sub` (SIGKILL: it goes away without a DISCONNECT, and a
    /// persistent session stays on the broker).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.kill();
    }
}
