//! The MQTT client of `kalki-shim run --mqtt URL`: readings from the devices' bound
//! topics, commands published on theirs (`docs/runtime.md`, "MQTT").
//!
//! One task polls the client's event loop ([`rumqttc::EventLoop`]) and does nothing else:
//! it forwards every message to the main loop ([`MqttEvent::Message`]) and every
//! broker acknowledgement of a command ([`MqttEvent::Delivered`]), subscribes again (QoS
//! 1, exact topics) after every connection, and reconnects after a loss with a bounded
//! exponential backoff. The main loop decodes, validates, journals and applies a message
//! exactly as it does an API reading, and only then acknowledges it ([`Mqtt::ack`]): the
//! session is persistent (`clean_session = false`) and acknowledgements are manual, so a
//! QoS 1 message the shim has not journaled is delivered again by the broker after a crash
//! of the shim or a lost connection, and none acknowledged is lost. Delivery is at least
//! once: a message can arrive twice (after a reconnection), which for a reading is
//! harmless (the same values again).
//!
//! Commands: [`Mqtt::publish`] sends a journaled command (QoS 1, not retained); the broker's
//! PUBACK is matched to it by packet id and reported as delivered. Commands still
//! unacknowledged when a connection is lost are sent again on the next one.
// The client logs with `tracing`, into the daemon's log (docs/runtime.md, "Logs").

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// The first delay before connecting again after a failure; it doubles with every
/// failure in a row, up to [`BACKOFF_MAX`], and starts again after a connection.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest delay between two connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Keep-alive: a broker gone silent (no TCP reset) is noticed within about twice this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// How long a TCP connection, TLS handshake and CONNACK may take, and any write.
pub const CONNECT_TIMEOUT_S: u64 = 10;
/// The largest packet read: the protocol's own limit, so that no message, however large,
/// breaks the connection (which the broker would answer by delivering it again, forever);
/// a payload over 64 KiB is then refused (S120). Bound it at the broker
/// (`max_packet_size` in mosquitto) to keep large messages off the node.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;
/// Requests waiting for the event loop (acknowledgements, subscriptions, commands).
const REQUEST_CAPACITY: usize = 4096;

/// Where the broker is: `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// The port may be left out (1883, or 8883 with TLS); nothing may follow it.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "`{url}`: expected mqtt://HOST:PORT or mqtts://HOST:PORT"
            ));
        };
        if let Some((_, after)) = rest.rsplit_once('@') {
            // Never echo what precedes the `@`: it is a password, or could be.
            let scheme = if tls { "mqtts" } else { "mqtt" };
            return Err(format!(
                "`{scheme}://***@{after}`: credentials do not go in the URL (give --mqtt-username and --mqtt-password-file)"
            ));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "`{url}`: only a host and a port (credentials go in --mqtt-username and --mqtt-password-file)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return Err(format!("`{url}`: an unclosed `[`"));
            };
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), Some(p)),
                None if after.is_empty() => (h.to_string(), None),
                None => return Err(format!("`{url}`: expected `:PORT` after `]`")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("`{url}`: `{p}` is not a port")),
            },
        };
        Ok(BrokerUrl { tls, host, port })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A password read from a file; its text is never printed.
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// A setting of the client that cannot be used: `run` refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--mqtt {0}")]
    Url(String),
    #[error("cannot read `{path}`: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("`{path}` can be read or written by group or others (mode {mode:04o}): `chmod 600 {}`", path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the password file `{path}` is empty")]
    EmptyPassword { path: PathBuf },
    #[error("--mqtt-password-file needs --mqtt-username")]
    PasswordWithoutUser,
    #[error("--mqtt-ca-file is for mqtts:// brokers; `{url}` is not one")]
    CaWithoutTls { url: String },
    #[error(
        "`{url}` is a TLS broker: give the CA that signed its certificate with --mqtt-ca-file"
    )]
    TlsWithoutCa { url: String },
    #[error("the CA file `{path}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")]
    NoCertificate { path: PathBuf },
    #[error("the CA file `{path}`: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("the client id `{id}`: {reason}")]
    ClientId { id: String, reason: &'static str },
}

/// How to reach the broker, checked before `run` starts.
#[derive(Clone)]
pub struct MqttConfig {
    pub url: BrokerUrl,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Password>,
    /// For `mqtts://`: the roots of the CA file, and nothing else.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The client id used when none is given: `kalki-shim-SITE`, the site's name with
/// anything but ASCII letters, digits, `-` and `_` made `_`. The same on every start, so
/// the broker keeps the session (subscriptions and queued messages) across restarts.
pub fn default_client_id(site: &str) -> String {
    let clean: String = site
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("kalki-shim-{clean}")
}

impl MqttConfig {
    /// Checks and reads everything: the URL, the password file (a regular file neither
    /// group nor others may read or write, not empty; a final newline is dropped), the CA
    /// file (PEM certificates).
    pub fn new(
        url: &str,
        client_id: String,
        username: Option<String>,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<MqttConfig, ConfigError> {
        let url = BrokerUrl::parse(url).map_err(ConfigError::Url)?;
        if client_id.is_empty() || client_id.len() > 65_535 || client_id.contains('\0') {
            return Err(ConfigError::ClientId {
                id: client_id,
                reason: "it must be 1 to 65535 bytes, without NUL",
            });
        }
        let password = match password_file {
            Some(p) => {
                if username.is_none() {
                    return Err(ConfigError::PasswordWithoutUser);
                }
                Some(read_password(p)?)
            }
            None => None,
        };
        let tls = match (url.tls, ca_file) {
            (true, Some(ca)) => Some(tls_config(ca)?),
            (true, None) => {
                return Err(ConfigError::TlsWithoutCa {
                    url: url.to_string(),
                })
            }
            (false, Some(_)) => {
                return Err(ConfigError::CaWithoutTls {
                    url: url.to_string(),
                })
            }
            (false, None) => None,
        };
        Ok(MqttConfig {
            url,
            client_id,
            username,
            password,
            tls,
        })
    }

    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id.clone(), self.url.host.clone(), self.url.port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET)
            .set_request_channel_capacity(REQUEST_CAPACITY);
        if let Some(user) = &self.username {
            let pass = self.password.as_ref().map_or("", |p| p.0.as_str());
            o.set_credentials(user.clone(), pass.to_string());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

/// A file that holds a secret: a regular file (not a link), neither group nor others may
/// read or write it.
fn read_private(path: &Path) -> Result<String, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(unreadable)?;
    if !meta.file_type().is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(unreadable)
}

fn read_password(path: &Path) -> Result<Password, ConfigError> {
    let text = read_private(path)?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(ConfigError::EmptyPassword {
            path: path.to_path_buf(),
        });
    }
    Ok(Password(text.to_string()))
}

/// A rustls client configuration that trusts exactly the CA file's certificates (on
/// `ring`, TLS 1.2 and 1.3, no client certificate).
fn tls_config(path: &Path) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |reason: String| ConfigError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What the client task tells the main loop.
#[derive(Debug)]
pub enum MqttEvent {
    /// A message on a subscribed topic; acknowledge it with [`Mqtt::ack`] once it is
    /// journaled, refused or ignored.
    Message(rumqttc::Publish),
    /// The broker acknowledged the command with this journal id.
    Delivered { id: u64 },
}

/// The connection to the broker, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Not yet connected since the start.
    Connecting,
    Connected,
    /// Lost, or refused; being tried again.
    Disconnected,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "DISCONNECTED",
        })
    }
}

/// The client in `status`: the connection and what came of the messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttStatus {
    pub broker: String,
    pub client_id: String,
    pub state: LinkState,
    /// Since when (Unix milliseconds) it is in `state`.
    pub since_ms: u64,
    /// Why the last connection ended or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Connections made since the start.
    pub connections: u64,
    /// Topics subscribed to (every bound topic).
    pub topics: usize,
    /// Messages received (retained and refused ones included).
    pub received: u64,
    /// Messages whose reading was journaled and applied.
    pub applied: u64,
    /// Messages refused, by code (S12x from decoding, S1xx from the engine); a message
    /// with problems of two codes counts under both.
    pub refused: BTreeMap<String, u64>,
    /// Retained messages ignored (delivered because of the subscription: old values).
    pub retained_ignored: u64,
    /// Messages on a topic no device binds (cannot happen with exact subscriptions).
    pub unbound: u64,
    /// Commands published (QoS 1), resent ones included.
    pub commands_published: u64,
    /// Of those, acknowledged by the broker.
    pub commands_delivered: u64,
    /// Acknowledgements of journaled messages, and commands, waiting on the shim's side
    /// for the client's queue (a burst: they go as it makes room).
    pub acks_waiting: usize,
    pub commands_waiting: usize,
}

/// The connection's state, written by the client task, read by `status`.
#[derive(Debug)]
struct Link {
    state: LinkState,
    since_ms: u64,
    last_error: Option<String>,
    connections: u64,
}

/// The commands published and not yet acknowledged, by the packet id the event loop gave
/// them. The event loop takes requests in order and gives each QoS 1 publication its
/// packet id when it sends it ([`Outgoing::Publish`]); a publication sent again after a
/// reconnection keeps its id. So a packet id not yet known is the oldest publication
/// still waiting for one.
#[derive(Debug, Default)]
struct Tracker {
    /// Journal ids of commands handed to the event loop, oldest first, without packet id.
    unassigned: VecDeque<u64>,
    by_pkid: BTreeMap<u16, u64>,
    /// The topic and payload of every command not yet acknowledged.
    outbox: BTreeMap<u64, (String, String)>,
    /// How many of `unassigned` the event loop took back into its own queue when the
    /// connection was lost (sent on the next connection if the broker kept the session,
    /// dropped if it did not).
    drained: usize,
    /// Commands journaled but not yet taken by the event loop (its request queue was
    /// full): handed to it, in order, as it makes room. Never dropped.
    queued: VecDeque<u64>,
    /// Acknowledgements not yet taken by the event loop, likewise: an acknowledgement is
    /// never dropped (the broker would deliver the message again, long after).
    acks: VecDeque<rumqttc::Publish>,
    /// The shim is stopping: the connection is ended, not made again.
    closing: bool,
    published: u64,
    delivered: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running client: publishes commands, acknowledges messages, says how it stands.
#[derive(Clone)]
pub struct Mqtt {
    client: AsyncClient,
    url: String,
    client_id: String,
    topics: usize,
    link: Arc<Mutex<Link>>,
    tracker: Arc<Mutex<Tracker>>,
    /// `kalki_mqtt_commands_published_total`, counted with `Tracker::published`.
    published: prometheus_client::metrics::counter::Counter,
}

impl fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mqtt").field("url", &self.url).finish()
    }
}

/// The client task: stopped (aborted) when dropped.
pub struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Task {
    /// Waits up to `limit` for the client task to end (after [`Mqtt::close`]).
    pub async fn finish(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, &mut self.0).await;
    }
}

impl Mqtt {
    /// Starts the client task: it connects (and reconnects) to the broker, subscribes to
    /// `topics` at QoS 1 after every connection, and sends what arrives on `events`.
    pub fn start(
        cfg: &MqttConfig,
        topics: Vec<String>,
        events: mpsc::Sender<MqttEvent>,
        now_ms: u64,
        published: prometheus_client::metrics::counter::Counter,
    ) -> (Mqtt, Task) {
        let (client, mut eventloop) = AsyncClient::new(cfg.options(), REQUEST_CAPACITY);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_connection_timeout(CONNECT_TIMEOUT_S);
        // Small packets (acknowledgements, commands) go out at once, not after the peer's
        // delayed ACK (about 40 ms a command with Nagle's algorithm on).
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let mqtt = Mqtt {
            client,
            url: cfg.url.to_string(),
            client_id: cfg.client_id.clone(),
            topics: topics.len(),
            link: Arc::new(Mutex::new(Link {
                state: LinkState::Connecting,
                since_ms: now_ms,
                last_error: None,
                connections: 0,
            })),
            tracker: Arc::new(Mutex::new(Tracker::default())),
            published,
        };
        let task = tokio::spawn(mqtt.clone().poll(eventloop, topics, events));
        (mqtt, Task(task))
    }

    /// Publishes a journaled command (QoS 1, not retained); its PUBACK comes back as
    /// [`MqttEvent::Delivered`]. When the event loop's queue is full the command waits in
    /// order on this side (still `pending` in the journal) and goes as it makes room.
    pub fn publish(&self, id: u64, topic: &str, payload: &str) -> Result<(), String> {
        {
            let mut t = lock(&self.tracker);
            t.outbox
                .insert(id, (topic.to_string(), payload.to_string()));
            t.queued.push_back(id);
        }
        self.flush();
        Ok(())
    }

    /// Acknowledges a message (QoS 1: the broker forgets it). Call it only once the
    /// message is journaled, or refused or ignored for good. Queued on this side while the
    /// event loop's queue is full; never dropped.
    pub fn ack(&self, message: &rumqttc::Publish) {
        lock(&self.tracker).acks.push_back(message.clone());
        self.flush();
    }

    /// Hands waiting acknowledgements, then waiting commands, to the event loop, in order,
    /// as far as its request queue takes them. Called after every event it reports.
    fn flush(&self) {
        let mut t = lock(&self.tracker);
        while let Some(m) = t.acks.front() {
            if self.client.try_ack(m).is_err() {
                return;
            }
            t.acks.pop_front();
        }
        while let Some(&id) = t.queued.front() {
            let Some((topic, payload)) = t.outbox.get(&id).cloned() else {
                t.queued.pop_front();
                continue;
            };
            t.unassigned.push_back(id);
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload.into_bytes())
            {
                Ok(()) => {
                    t.queued.pop_front();
                    t.published += 1;
                    self.published.inc();
                }
                Err(_) => {
                    t.unassigned.pop_back();
                    return;
                }
            }
        }
    }

    /// Stopping: hands what waits (acknowledgements first) to the event loop, for up to
    /// `limit`, then ends the connection (DISCONNECT after them), so that the broker has
    /// every acknowledgement of a journaled message and does not deliver it again.
    pub async fn close(&self, limit: Duration) {
        let start = std::time::Instant::now();
        lock(&self.tracker).closing = true;
        while start.elapsed() < limit {
            self.flush();
            if self.waiting() == (0, 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.client.try_disconnect();
    }

    /// Acknowledgements and commands waiting on this side for the event loop.
    pub fn waiting(&self) -> (usize, usize) {
        let t = lock(&self.tracker);
        (t.acks.len(), t.queued.len())
    }

    /// The connection and the client's command counts; the message counts are the main
    /// loop's ([`Counts`]).
    pub fn status(&self, counts: &Counts) -> MqttStatus {
        let link = lock(&self.link);
        let t = lock(&self.tracker);
        MqttStatus {
            broker: self.url.clone(),
            client_id: self.client_id.clone(),
            state: link.state,
            since_ms: link.since_ms,
            last_error: link.last_error.clone(),
            connections: link.connections,
            topics: self.topics,
            received: counts.received,
            applied: counts.applied,
            refused: counts.refused.clone(),
            retained_ignored: counts.retained_ignored,
            unbound: counts.unbound,
            commands_published: t.published,
            commands_delivered: t.delivered,
            acks_waiting: t.acks.len(),
            commands_waiting: t.queued.len(),
        }
    }

    fn set_link(&self, state: LinkState, error: Option<String>) {
        let mut l = lock(&self.link);
        // Until a first connection it is still `connecting` (with why the last attempt
        // failed), not `disconnected` from something it never had.
        let state = if state == LinkState::Disconnected && l.connections == 0 {
            LinkState::Connecting
        } else {
            state
        };
        if l.state != state {
            l.since_ms = crate::run::now_ms();
        }
        l.state = state;
        if state == LinkState::Connected {
            l.connections += 1;
        }
        if error.is_some() {
            l.last_error = error;
        }
    }

    async fn poll(
        self,
        mut eventloop: EventLoop,
        topics: Vec<String>,
        events: mpsc::Sender<MqttEvent>,
    ) {
        let mut failures: u32 = 0;
        let mut connected = false;
        let mut connected_at = std::time::Instant::now();
        // Subscriptions still to hand to the event loop (its queue may be full).
        let mut subscribe = false;
        loop {
            if subscribe {
                let filters = topics
                    .iter()
                    .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                subscribe = self.client.try_subscribe_many(filters).is_err();
            }
            let polled = eventloop.poll().await;
            // Each event may have made room in the event loop's request queue.
            self.flush();
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    connected_at = std::time::Instant::now();
                    self.set_link(LinkState::Connected, None);
                    let resent = self.connected(ack.session_present);
                    tracing::info!(
                        event = "mqtt_connected",
                        broker = %self.url,
                        session_present = ack.session_present,
                        resent,
                        "mqtt: connected to {} as `{}` (session {}); subscribing to {} topic{}{}",
                        self.url,
                        self.client_id,
                        if ack.session_present { "resumed" } else { "new" },
                        topics.len(),
                        if topics.len() == 1 { "" } else { "s" },
                        if resent > 0 {
                            format!("; {resent} unacknowledged commands sent again")
                        } else {
                            String::new()
                        }
                    );
                    subscribe = !topics.is_empty();
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused: Vec<&str> = ack
                        .return_codes
                        .iter()
                        .zip(&topics)
                        .filter(|(c, _)| matches!(c, SubscribeReasonCode::Failure))
                        .map(|(_, t)| t.as_str())
                        .collect();
                    if !refused.is_empty() {
                        let e = format!(
                            "the broker refused the subscription to {} (not allowed for this user?)",
                            refused.join(", ")
                        );
                        tracing::warn!(
                            event = "mqtt_subscription_refused",
                            topics = %refused.join(","),
                            "mqtt: WARNING: {e}"
                        );
                        lock(&self.link).last_error = Some(e);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if events.send(MqttEvent::Message(p)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let id = {
                        let mut t = lock(&self.tracker);
                        let id = t.by_pkid.remove(&ack.pkid);
                        if let Some(id) = id {
                            t.outbox.remove(&id);
                            t.delivered += 1;
                        }
                        id
                    };
                    if let Some(id) = id {
                        if events.send(MqttEvent::Delivered { id }).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mut t = lock(&self.tracker);
                    if !t.by_pkid.contains_key(&pkid) {
                        if let Some(id) = t.unassigned.pop_front() {
                            t.drained = t.drained.saturating_sub(1);
                            t.by_pkid.insert(pkid, id);
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if lock(&self.tracker).closing => {
                    return;
                }
                Ok(_) => {}
                Err(_) if lock(&self.tracker).closing => return,
                Err(e) => {
                    let why = describe(&e, &self.url);
                    let delay = if connected {
                        // The event loop took back what it had not sent or had not seen
                        // acknowledged; commands handed to it after this wait in its queue.
                        let mut t = lock(&self.tracker);
                        t.drained = t.unassigned.len();
                        drop(t);
                        tracing::warn!(
                            event = "mqtt_lost",
                            broker = %self.url,
                            error = %why,
                            "mqtt: lost the connection to {}: {why}; reconnecting",
                            self.url
                        );
                        connected = false;
                        // At once after a connection that lasted; after one dropped at
                        // once (another client with the same id, a broker restarting
                        // again), the backoff goes on growing.
                        if connected_at.elapsed() >= STABLE {
                            failures = 0;
                            Duration::ZERO
                        } else {
                            failures = failures.saturating_add(1);
                            backoff(failures)
                        }
                    } else {
                        failures = failures.saturating_add(1);
                        let delay = backoff(failures);
                        tracing::warn!(
                            event = "mqtt_connect_failed",
                            broker = %self.url,
                            error = %why,
                            attempt = failures,
                            "mqtt: cannot connect to {}: {why}; trying again in {:.1} s (attempt {failures})",
                            self.url,
                            delay.as_secs_f64()
                        );
                        delay
                    };
                    self.set_link(LinkState::Disconnected, Some(why));
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    /// After a CONNACK: if the broker kept the session, the event loop sends again what it
    /// held; if not, it dropped it, and the commands it held are published anew. Returns
    /// how many were.
    fn connected(&self, session_present: bool) -> usize {
        let mut t = lock(&self.tracker);
        let drained = std::mem::take(&mut t.drained);
        if session_present {
            return 0;
        }
        // Lost: those with a packet id, and the oldest `drained` without one. The others
        // are still in the request queue, ahead of what is published now.
        let mut lost: Vec<u64> = t.by_pkid.values().copied().collect();
        t.by_pkid.clear();
        let at = drained.min(t.unassigned.len());
        let keep = t.unassigned.split_off(at);
        lost.extend(t.unassigned.drain(..));
        t.unassigned = keep;
        lost.sort_unstable();
        // Sent again ahead of the commands still waiting on this side.
        let resent = lost.iter().filter(|id| t.outbox.contains_key(id)).count();
        for id in lost.into_iter().rev() {
            if t.outbox.contains_key(&id) {
                t.queued.push_front(id);
            }
        }
        drop(t);
        self.flush();
        resent
    }
}

/// The main loop's counts of messages.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub received: u64,
    pub applied: u64,
    pub refused: BTreeMap<String, u64>,
    pub retained_ignored: u64,
    pub unbound: u64,
}

impl Counts {
    /// Counts a refused message under each of its codes, once.
    pub fn refuse<'a>(&mut self, codes: impl IntoIterator<Item = &'a str>) {
        let mut seen: Vec<&str> = codes.into_iter().collect();
        seen.sort_unstable();
        seen.dedup();
        for c in seen {
            *self.refused.entry(c.to_string()).or_insert(0) += 1;
        }
    }
}

/// The delay before the `failures`-th attempt in a row: 0.5 s, 1, 2, 4, ... up to 30 s.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (BACKOFF_MIN * (1u32 << exp)).min(BACKOFF_MAX)
}

/// A connection error in words, with what to do when it is the operator's to fix.
fn describe(e: &ConnectionError, url: &str) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => "the broker refused the connection: bad user name or password (check --mqtt-username and --mqtt-password-file)".into(),
            // What mosquitto answers to a wrong password, too.
            ConnectReturnCode::NotAuthorized => "the broker refused the connection: not authorised: a wrong user name or password, or a user the broker does not allow (check --mqtt-username, --mqtt-password-file and the broker's configuration)".into(),
            ConnectReturnCode::BadClientId => "the broker refused the client id (give another with --mqtt-client-id)".into(),
            other => format!("the broker refused the connection ({other:?})"),
        },
        ConnectionError::Tls(t) => format!(
            "TLS with {url} failed: {t} (is --mqtt-ca-file the CA that signed the broker's certificate, and does the certificate name the host?)"
        ),
        ConnectionError::Io(io) => {
            // rustls reports a certificate it rejects as an I/O error of the handshake.
            let text = io.to_string();
            if text.contains("certificate") || text.contains("Certificate") {
                format!(
                    "TLS with {url} failed: {text} (is --mqtt-ca-file the CA that signed the broker's certificate, and does the certificate name the host?)"
                )
            } else {
                format!("I/O: {text}")
            }
        }
        ConnectionError::NetworkTimeout => {
            format!("no connection within {CONNECT_TIMEOUT_S} s")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn urls() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1884));
        assert_eq!(BrokerUrl::parse("mqtts://broker").unwrap().port, 8883);
        assert_eq!(BrokerUrl::parse("mqtt://broker").unwrap().port, 1883);
        let v6 = BrokerUrl::parse("mqtt://[::1]:1883").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "mqtt://[::1]:1883");
        for bad in [
            "tcp://h:1",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://u:p@h:1",
            "mqtt://h:1/topic",
            "mqtts://h:1@x",
            "http://h:1",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        let e = BrokerUrl::parse("mqtt://kalki:S3cret-pw!@broker:1883").unwrap_err();
        assert!(!e.contains("S3cret"), "{e}");
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn client_ids() {
        assert_eq!(default_client_id("office"), "kalki-shim-office");
        assert_eq!(default_client_id("a b/c"), "kalki-shim-a_b_c");
    }

    #[test]
    fn counts_each_code_once_per_message() {
        let mut c = Counts::default();
        c.refuse(["S122", "S121", "S122"]);
        c.refuse(["S121"]);
        assert_eq!(c.refused["S121"], 2);
        assert_eq!(c.refused["S122"], 1);
    }
}
