//! `kalki-shim`: the command-line front of the runtime. The only code that reads files
//! and writes to the terminal; everything else is in the library. `status`, `event`,
//! `alert` and `reset` are clients of a running shim's API (`api.rs`).

use clap::{Parser, Subcommand, ValueEnum};
use kalki_model::duration;
use kalki_shim::api::{self, Accepted, Client, ClientError, Endpoint, Token};
use kalki_shim::bundle::{self, BundleError};
use kalki_shim::containers::Containers;
use kalki_shim::enforcement::{self, Enforcement};
use kalki_shim::node::{self, Closed, Node, NodeConfig};
use kalki_shim::simulate;
use kalki_shim::{docker, oci};
use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource, Report};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit codes, as documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    /// The bundle or the trace was refused.
    Refused = 1,
    /// Bad usage, or an input could not be read.
    Usage = 2,
    /// `status`: at least one device's posture is not in force.
    NotEnforced = 3,
    /// `status`: every device enforced or failed closed, at least one failed closed.
    FailedClosed = 4,
}

const EXIT_HELP: &str = "Exit codes:\n  0  success\n  1  the bundle or the trace was refused (tampered, malformed, a bad event)\n  2  usage error, or an input could not be read";

const STATUS_HELP: &str = "The API is found with --api, else $KALKI_API, else http://127.0.0.1:7878; the token is read from --token-file, else $KALKI_TOKEN_FILE, else /etc/kalki/token (a file other users may read is refused).\n\nEvery device's enforcement is seen afresh on the node: `enforced` (its state's posture is in force), `failed-closed` (what is in force instead: its most restrictive state, or no flows) or `NOT-ENFORCED` (why); and what the posture in force lets through (`nothing crosses`, `everything crosses`, what needs credentials), from its µmboxes' traffic contracts, `unknown` for a device not enforced.\n\nExit codes:\n  0  every device is enforced\n  1  the shim refused the request (its message is printed)\n  2  usage error, an unusable token file, or the shim unreachable or not answering in time\n  3  at least one device is not enforced\n  4  no device is not enforced, but at least one failed closed";

const CLIENT_HELP: &str = "The API is found with --api, else $KALKI_API, else http://127.0.0.1:7878; the token is read from --token-file, else $KALKI_TOKEN_FILE, else /etc/kalki/token (a file other users may read is refused).\n\nExit codes:\n  0  success\n  1  the shim refused the request (its message is printed)\n  2  usage error, an unusable token file, or the shim unreachable or not answering in time";

const DEFAULT_API: &str = "http://127.0.0.1:7878";
const DEFAULT_TOKEN_FILE: &str = "/etc/kalki/token";

#[derive(Parser)]
#[command(name = "kalki-shim", version, about = "Runtime for Kalki bundles built by `kalkic build`", after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a trace of timestamped events through the bundle's state machines on a
    /// virtual clock (no Open vSwitch, no Docker) and print the timeline of state changes,
    /// commands and raised alerts. Trace format: docs/runtime.md.
    #[command(after_help = EXIT_HELP)]
    Simulate(SimulateArgs),
    /// Bring this node's Open vSwitch bridge and Docker engine to the bundle: bridge and
    /// ports with the bundle's numbers, base flows, each device's flows for its state,
    /// its µmboxes running and plugged in. Idempotent; `--dry-run` prints the plan.
    #[command(after_help = EXIT_HELP)]
    Apply(ApplyArgs),
    /// Apply the bundle (every device in its journaled state), then serve events until
    /// SIGINT or SIGTERM: readings, alerts and operator actions on the API, alerts from
    /// the µmboxes, the policy's timers. Every accepted event and every state change is
    /// journaled; a restart resumes from the journal.
    #[command(after_help = EXIT_HELP)]
    Run(Box<RunArgs>),
    /// The engine of a site that spans nodes (docs/scale-out.md): follows the site's
    /// input log in etcd, leads when no other controller does (then serves the API,
    /// commits each input with the postures it decides, runs the timers), and stands by
    /// otherwise. Until SIGINT or SIGTERM.
    #[command(after_help = EXIT_HELP)]
    Controller(Box<ControllerArgs>),
    /// One node of a site that spans nodes (docs/scale-out.md): brings the devices
    /// attached to node NAME to the postures the controller decides (read from etcd), and
    /// reports what the node holds. Until SIGINT or SIGTERM.
    #[command(after_help = EXIT_HELP)]
    Agent(Box<AgentArgs>),
    /// Show every device of the running shim: its state, whether its posture is in force
    /// on the node (enforced, failed closed, not enforced), what that posture lets
    /// through, since when and why, and the µmboxes in front of it.
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
    /// Send a reading of a device's sensed variables: `VAR=VALUE`, where VALUE is `true`,
    /// `false`, an integer, or the name of an enum member.
    #[command(after_help = CLIENT_HELP)]
    Event(EventArgs),
    /// Send an alert for a device, as its µmbox `--source` would.
    #[command(after_help = CLIENT_HELP)]
    Alert(AlertArgs),
    /// The operator's reset of a device (`on operator reset`).
    #[command(after_help = CLIENT_HELP)]
    Reset(ResetArgs),
    /// Print a completion script for a shell, e.g.
    /// `kalki-shim completions bash > /etc/bash_completion.d/kalki-shim`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Where and how the node is driven.
#[derive(clap::Args)]
struct NodeArgs {
    /// What runs the µmboxes: the Docker engine, or an OCI runtime driven directly
    /// (no daemon; about 1 MB per µmbox; images exported by `make images`). Both confine
    /// a µmbox alike (docs/runtime.md, "µmbox backends and isolation").
    #[arg(long, value_enum, default_value_t = Backend::Docker)]
    umbox_backend: Backend,
    /// The Docker engine's socket (--umbox-backend docker).
    #[arg(long, default_value = "/var/run/docker.sock", value_name = "PATH")]
    docker: String,
    /// The OCI runtime (--umbox-backend oci): `runc`, or `crun` on a cgroup v2 host.
    #[arg(long, default_value = "runc", value_name = "PROGRAM")]
    oci_runtime: String,
    /// Where the OCI backend keeps its containers' bundles, records and output.
    #[arg(long, default_value = oci::DEFAULT_STATE, value_name = "DIR")]
    oci_state: PathBuf,
    /// Where the OCI backend finds images: REPO/TAG/rootfs and REPO/TAG/image.json.
    #[arg(long, default_value = oci::DEFAULT_IMAGES, value_name = "DIR")]
    oci_images: PathBuf,
    /// Open vSwitch datapath for a bridge the shim creates: `netdev` (userspace, needs no
    /// kernel module) or `system`.
    #[arg(long, default_value = "netdev")]
    datapath: String,
    /// Limit of every single Open vSwitch, Docker or `ip` call (`10s`, `1m`; a bare
    /// number is seconds).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = seconds_flag)]
    call_timeout: Duration,
    /// How long a µmbox may take to report ready (a bare number is seconds).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = seconds_flag)]
    ready_timeout: Duration,
    /// How many µmboxes are started or stopped at once.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
    /// How many µmboxes of the devices' next states to keep started and idle, so that a
    /// change to such a state only swaps flows (each costs what a µmbox costs: about
    /// 1 MB under the OCI backend, 9 MB under Docker). 0: none; every change that needs
    /// a µmbox starts it.
    #[arg(long, default_value_t = 0, value_name = "N")]
    warm: usize,
    /// How long a µmbox's start is tried again when the backend does not answer in time,
    /// before its device fails closed (a bare number is seconds).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = seconds_flag)]
    start_deadline: Duration,
    /// Where the µmboxes' secrets are: secret NAME of device DEV is DIR/DEV/NAME if it
    /// exists, else DIR/NAME; a regular file that group and others cannot read or write
    /// (`chmod 600`). A µmbox whose secret is missing or exposed is not started, and its
    /// device fails closed.
    #[arg(long, default_value = kalki_shim::secrets::DEFAULT_DIR, value_name = "DIR")]
    secrets_dir: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The bundle directory written by `kalkic build`.
    bundle: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    journal: JournalArgs,
    /// Where the API listens: `HOST:PORT` (loopback only, unless --listen-any) or
    /// `unix:PATH` (a socket with mode 0600).
    #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR|unix:PATH")]
    listen: String,
    /// Allow a non-loopback address for --listen.
    #[arg(long)]
    listen_any: bool,
    /// The file holding the API's bearer token (not readable by other users; at least 16
    /// characters) [default: $KALKI_TOKEN_FILE, else /etc/kalki/token]
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Where device commands fired by rules are POSTed as JSON (`http://HOST:PORT/PATH`);
    /// without it, commands are journaled only.
    #[arg(long, value_name = "URL")]
    command_webhook: Option<String>,
    /// How often the node is looked at and repaired (flows by cookie, ports, µmboxes),
    /// besides when a µmbox stops and at every status request: 100ms to 1h (a bare number
    /// is seconds, fractions allowed).
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = reconcile_interval)]
    reconcile_interval: Duration,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Colour in error reports (printed on standard error).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
    /// The log's format on standard error: `human` (one sentence a line) or `json` (one
    /// object a line, with the fields of docs/runtime.md, "Logs").
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// The least severe log lines written.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

/// How a controller or an agent reaches etcd (`docs/scale-out.md`, "Security").
#[derive(clap::Args)]
struct EtcdArgs {
    /// etcd's members: `https://HOST:PORT`, comma-separated or repeated.
    #[arg(
        long = "etcd",
        value_name = "URL",
        value_delimiter = ',',
        required = true
    )]
    etcd: Vec<String>,
    /// The CA that signed the members' certificates (PEM).
    #[arg(long, value_name = "PATH")]
    etcd_ca: PathBuf,
    /// This process's client certificate (PEM), signed by a CA the members trust.
    #[arg(long, value_name = "PATH")]
    etcd_cert: PathBuf,
    /// Its private key (PEM; not readable by other users).
    #[arg(long, value_name = "PATH")]
    etcd_key: PathBuf,
    /// The deadline of every call to etcd: 100ms to 1h (a bare number is seconds).
    #[arg(long, default_value = "3s", value_name = "DURATION", value_parser = reconcile_interval)]
    etcd_timeout: Duration,
    /// The lease that says this process is alive: 2s to 1h; another controller takes
    /// over (or the agent's node is reported unreachable) this long after it stops.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = lease_ttl)]
    lease_ttl: Duration,
    /// This process's name in etcd [default: HOST-PID]
    #[arg(long, value_name = "NAME")]
    id: Option<String>,
}

impl EtcdArgs {
    fn config(&self) -> kalki_shim::cluster::store::EtcdConfig {
        kalki_shim::cluster::store::EtcdConfig {
            endpoints: self.etcd.clone(),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            timeout: self.etcd_timeout,
        }
    }

    fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The key file must be readable by this user only, as the token file.
    fn check_key(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&self.etcd_key)
            .map_err(|e| format!("--etcd-key `{}`: {e}", self.etcd_key.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "--etcd-key `{}` may be read by other users (chmod 600 it)",
                self.etcd_key.display()
            ));
        }
        Ok(())
    }
}

fn lease_ttl(text: &str) -> Result<Duration, String> {
    duration::parse_flag(
        text,
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(3600),
    )
}

#[derive(Parser)]
struct ControllerArgs {
    /// The site's bundle directory written by `kalkic build` (a site with `node`s).
    bundle: PathBuf,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    clock: ClockArgs,
    /// Where the API listens while this controller leads: `HOST:PORT` (loopback only,
    /// unless --listen-any) or `unix:PATH`.
    #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR|unix:PATH")]
    listen: String,
    /// Allow a non-loopback address for --listen.
    #[arg(long)]
    listen_any: bool,
    /// The file holding the API's bearer token [default: $KALKI_TOKEN_FILE, else
    /// /etc/kalki/token]
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Run a site whose rules send device commands, knowing that the controller does
    /// not send them: each is logged as `command_not_sent` (without it: S009).
    #[arg(long)]
    without_commands: bool,
    /// Run a site whose devices read telemetry from MQTT, knowing that the controller
    /// does not read it: readings come only through the API (without it: S009).
    #[arg(long)]
    without_mqtt: bool,
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(Parser)]
struct AgentArgs {
    /// The site's bundle directory written by `kalkic build`; the agent runs its part
    /// `nodes/NAME/`.
    bundle: PathBuf,
    /// The node this agent runs (a `node` of the site).
    #[arg(long, value_name = "NAME")]
    node: String,
    #[command(flatten)]
    node_args: NodeArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Where the agent keeps the postures it last applied (it starts from them when etcd
    /// is out of reach).
    #[arg(long, default_value = "/var/lib/kalki-shim/agent", value_name = "DIR")]
    state_dir: PathBuf,
    /// How often the node is looked at and repaired: 100ms to 1h.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = reconcile_interval)]
    reconcile_interval: Duration,
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// `run`'s log: tracing events to standard error, as sentences (`kalki-shim: ...`, each
/// event's message, whose text carries its fields) or as JSON objects (time, level,
/// target, message and every field at the top level).
fn init_log(format: LogFormat, level: LogLevel) {
    // A second subscriber cannot be set (never happens: `run` sets it once); the log
    // would then go to the first one.
    let _ = tracing::subscriber::set_global_default(log_subscriber(format, level, std::io::stderr));
}

/// The subscriber of [`init_log`], writing to `writer`.
fn log_subscriber<W>(
    format: LogFormat,
    level: LogLevel,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::filter::LevelFilter;
    let level = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level)
        .with_ansi(false);
    match format {
        LogFormat::Human => Box::new(builder.event_format(Sentence).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// The human format: `kalki-shim: MESSAGE`, as the shim has always written its log (the
/// message says what its fields hold).
struct Sentence;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Sentence
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        struct Message<'w, 'a>(
            &'w mut tracing_subscriber::fmt::format::Writer<'a>,
            std::fmt::Result,
        );
        impl tracing::field::Visit for Message<'_, '_> {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.1 = self.0.write_str(value);
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.1 = write!(self.0, "{value:?}");
                }
            }
        }
        writer.write_str("kalki-shim: ")?;
        let mut m = Message(&mut writer, Ok(()));
        event.record(&mut m);
        m.1?;
        writeln!(writer)
    }
}

/// The MQTT broker of the devices' telemetry bindings.
#[derive(clap::Args)]
struct MqttArgs {
    /// The broker the devices' bound topics are read from (QoS 1, persistent session)
    /// and their commands published on: `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (TLS,
    /// with --mqtt-ca-file). A bundle with bindings needs it, or --no-mqtt.
    #[arg(long, value_name = "URL", conflicts_with = "no_mqtt")]
    mqtt: Option<String>,
    /// The MQTT client id [default: kalki-shim-SITE]; keep it the same across restarts,
    /// so the broker keeps the session and what was published meanwhile.
    #[arg(long, value_name = "ID", requires = "mqtt")]
    mqtt_client_id: Option<String>,
    /// The user name given to the broker.
    #[arg(long, value_name = "NAME", requires = "mqtt")]
    mqtt_username: Option<String>,
    /// The file holding the broker password (not readable by group or others; a final
    /// newline is dropped). Never give a password on the command line.
    #[arg(long, value_name = "PATH", requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// The CA certificate(s), PEM, that signed the broker's certificate (mqtts:// only;
    /// only these are trusted).
    #[arg(long, value_name = "PATH", requires = "mqtt")]
    mqtt_ca_file: Option<PathBuf>,
    /// Run a bundle that has MQTT bindings without a broker: its devices then get
    /// readings only from the API, and their `after ... silent` timers run out.
    #[arg(long)]
    no_mqtt: bool,
}

fn reconcile_interval(text: &str) -> Result<Duration, String> {
    duration::parse_flag(
        text,
        Duration::from_secs(1),
        Duration::from_millis(100),
        Duration::from_secs(3600),
    )
}

/// `--timeout` of the API's clients: 1s to 1h.
fn client_timeout(text: &str) -> Result<Duration, String> {
    duration::parse_flag(
        text,
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(3600),
    )
}

/// A time flag whose bare number is seconds: 1s to 1d.
fn seconds_flag(text: &str) -> Result<Duration, String> {
    duration::parse_flag(
        text,
        Duration::from_secs(1),
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    )
}

/// `simulate --until`: a bare number is milliseconds, as the trace's `t_ms`.
fn until_flag(text: &str) -> Result<u64, String> {
    let max = Duration::from_millis(kalki_shim::trace::MAX_T_MS);
    let d = duration::parse_flag(text, Duration::from_millis(1), Duration::ZERO, max)?;
    u64::try_from(d.as_millis()).map_err(|_| format!("`{text}` is too large"))
}

/// The journal and the clock it is replayed with.
#[derive(clap::Args)]
struct JournalArgs {
    /// The journal (SQLite) of `kalki-shim run`: created by `run` if missing; `apply`
    /// applies each device in its journaled state when it exists.
    #[arg(
        long,
        default_value = "/var/lib/kalki-shim/journal.db",
        value_name = "PATH"
    )]
    journal: PathBuf,
    #[command(flatten)]
    clock: ClockArgs,
}

impl JournalArgs {
    fn clock(&self) -> Option<kalki_shim::engine::Config> {
        self.clock.clock()
    }
}

/// The clock the policy's `clock in` windows read.
#[derive(clap::Args)]
struct ClockArgs {
    /// The node's offset from UTC, for the policy's clock (`+01:00`, `-05:30`).
    #[arg(long, default_value = "+00:00", value_name = "±HH:MM")]
    utc_offset: String,
    /// The node's time zone, an IANA name (`Europe/Berlin`): clock windows follow its wall
    /// clock across daylight saving. Instead of `--utc-offset`.
    #[arg(long, value_name = "NAME", conflicts_with = "utc_offset")]
    time_zone: Option<String>,
}

impl ClockArgs {
    /// How Unix time maps to the node's wall clock: `--time-zone`, else `--utc-offset`;
    /// `None` after saying why.
    fn clock(&self) -> Option<kalki_shim::engine::Config> {
        if let Some(name) = &self.time_zone {
            // Engine time under `run` is Unix time: the zone's origin is Unix time 0.
            return match kalki_model::clock::Zone::named(name, 0) {
                Ok(zone) => Some(kalki_shim::engine::Config {
                    day_offset_ms: 0,
                    zone: Some(zone),
                }),
                Err(e) => {
                    eprintln!("error: --time-zone {e}");
                    None
                }
            };
        }
        let offset = day_offset(&self.utc_offset);
        if offset.is_none() {
            eprintln!("error: --utc-offset `{}`: expected ±HH:MM", self.utc_offset);
        }
        offset.map(kalki_shim::engine::Config::fixed)
    }
}

#[derive(clap::Args)]
struct ApplyArgs {
    /// The bundle directory written by `kalkic build`.
    bundle: PathBuf,
    /// Print what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    journal: JournalArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Colour in error reports (printed on standard error).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

/// How to reach the shim's API.
#[derive(clap::Args)]
struct ClientArgs {
    /// The API: `http://HOST:PORT` or `unix:PATH` [default: $KALKI_API, else http://127.0.0.1:7878]
    #[arg(long, value_name = "URL|unix:PATH")]
    api: Option<String>,
    /// The file holding the API token [default: $KALKI_TOKEN_FILE, else /etc/kalki/token]
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Give up after this long: 1s to 1h (`15s`, `2m`; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = client_timeout)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print the status as the API's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct EventArgs {
    #[command(flatten)]
    client: ClientArgs,
    device: String,
    /// The values, `VAR=VALUE` each.
    #[arg(required = true, value_name = "VAR=VALUE")]
    values: Vec<String>,
}

#[derive(clap::Args)]
struct AlertArgs {
    #[command(flatten)]
    client: ClientArgs,
    device: String,
    alert: String,
    /// The µmbox that raised it (left out: the device itself).
    #[arg(long, value_name = "UMBOX")]
    source: Option<String>,
}

#[derive(clap::Args)]
struct ResetArgs {
    #[command(flatten)]
    client: ClientArgs,
    device: String,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The bundle directory written by `kalkic build`.
    bundle: PathBuf,
    /// The trace: JSON Lines, one event a line.
    trace: PathBuf,
    /// Output format of the timeline.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Keep firing timers until this time since the start of the trace, past the last
    /// event: `3h`, `90s`, or a bare number of milliseconds (as `t_ms`). At most 366 days.
    #[arg(long, value_name = "DURATION", value_parser = until_flag)]
    until: Option<u64>,
    /// Replay on the wall clock of a time zone, an IANA name (`Europe/Berlin`), daylight
    /// saving included. The trace's first timestamp (`at`) is `t_ms` 0 and gives the date.
    #[arg(long, value_name = "NAME")]
    time_zone: Option<String>,
    /// Colour in error reports (printed on standard error).
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// What runs the µmboxes.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Docker,
    Oci,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage as u8
            } else {
                Exit::Ok as u8
            });
        }
    };
    let exit = match cli.command {
        Command::Simulate(args) => run_simulate(&args),
        Command::Apply(args) => run_apply(&args),
        Command::Run(args) => run_run(&args),
        Command::Controller(args) => run_controller(&args),
        Command::Agent(args) => run_agent(&args),
        Command::Status(args) => run_status(&args),
        Command::Event(args) => run_event(&args),
        Command::Alert(args) => run_alert(&args),
        Command::Reset(args) => run_reset(&args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kalki-shim", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => Exit::Ok,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
                Err(e) => {
                    eprintln!("error: cannot write the completion script: {e}");
                    Exit::Usage
                }
            }
        }
    };
    ExitCode::from(exit as u8)
}

fn handler(color: Color) -> GraphicalReportHandler {
    let color = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false)
}

/// Prints reports on standard error.
fn report(color: Color, reports: impl IntoIterator<Item = Report>) {
    let h = handler(color);
    let mut out = String::new();
    for r in reports {
        if h.render_report(&mut out, r.as_ref()).is_err() {
            out.push_str(&format!("{r}\n"));
        }
        out.push('\n');
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// A bundle `run` and `apply` can take: a site on one node, not a site spanning nodes
/// nor a node's part of one (S008).
fn load_one_node(dir: &std::path::Path, color: Color) -> Result<bundle::Bundle, Exit> {
    let b = load_bundle(dir, color)?;
    if let Err(e) = bundle::one_node(&b) {
        report(color, std::iter::once(Report::new(e)));
        eprintln!("bundle `{}` refused", dir.display());
        return Err(Exit::Refused);
    }
    Ok(b)
}

/// Loads and checks a bundle directory, reporting every problem.
fn load_bundle(dir: &std::path::Path, color: Color) -> Result<bundle::Bundle, Exit> {
    if !dir.join(bundle::MANIFEST).is_file() {
        eprintln!(
            "error: `{}` is not a bundle directory (no {})",
            dir.display(),
            bundle::MANIFEST
        );
        return Err(Exit::Usage);
    }
    bundle::load_dir(dir).map_err(|errors| {
        let unreadable = errors
            .iter()
            .all(|e| matches!(e, BundleError::Unreadable { .. }));
        let n = errors.len();
        report(color, errors.into_iter().map(Report::new));
        eprintln!(
            "bundle `{}` refused ({n} problem{})",
            dir.display(),
            if n == 1 { "" } else { "s" }
        );
        if unreadable {
            Exit::Usage
        } else {
            Exit::Refused
        }
    })
}

fn run_simulate(args: &SimulateArgs) -> Exit {
    if let Some(name) = &args.time_zone {
        if let Err(e) = kalki_model::clock::Zone::named(name, 0) {
            eprintln!("error: --time-zone {e}");
            return Exit::Usage;
        }
    }
    let bundle = match load_bundle(&args.bundle, args.color) {
        Ok(b) => b,
        Err(exit) => return exit,
    };
    // Bytes: a capture may hold payloads that are not UTF-8 (the trace reader takes each
    // line as it can, and locates the ones it cannot).
    let text = match std::fs::read(&args.trace) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", args.trace.display());
            return Exit::Usage;
        }
    };
    let timeline = match simulate::simulate(&bundle, &text, args.until, args.time_zone.as_deref()) {
        Ok(t) => t,
        Err(errors) => {
            let n = errors.len();
            let lines = errors
                .iter()
                .map(|e| e.line)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let name = args.trace.display().to_string();
            let text = kalki_shim::trace::display_text(&text);
            report(
                args.color,
                errors.into_iter().map(|e| {
                    Report::new(e).with_source_code(NamedSource::new(name.clone(), text.clone()))
                }),
            );
            eprintln!(
                "trace `{name}` refused ({n} problem{} on {lines} line{}); nothing was replayed",
                if n == 1 { "" } else { "s" },
                if lines == 1 { "" } else { "s" }
            );
            return Exit::Refused;
        }
    };
    let out = match args.format {
        Format::Text => simulate::render_text(&timeline),
        Format::Json => simulate::render_json(&timeline),
    };
    match std::io::stdout().write_all(out.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Usage,
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

fn node_config(args: &NodeArgs) -> NodeConfig {
    NodeConfig {
        datapath: args.datapath.clone(),
        call_timeout: args.call_timeout,
        ready_timeout: args.ready_timeout,
        // Docker mounts only absolute paths: a relative one is taken from where the shim
        // was started, once, here.
        secrets_dir: std::path::absolute(&args.secrets_dir)
            .unwrap_or_else(|_| args.secrets_dir.clone()),
        parallel: usize::from(args.parallel),
        start_deadline: args.start_deadline,
        warm: args.warm,
    }
}

/// The µmboxes' backend the options name; reached at its first use.
fn containers(args: &NodeArgs, cfg: &NodeConfig) -> Containers {
    match args.umbox_backend {
        Backend::Docker => Containers::Docker(docker::Engine::lazy(&args.docker, cfg.call_timeout)),
        Backend::Oci => Containers::Oci(oci::Oci::new(oci::OciConfig {
            runtime: args.oci_runtime.clone(),
            state: std::path::absolute(&args.oci_state).unwrap_or_else(|_| args.oci_state.clone()),
            images: std::path::absolute(&args.oci_images)
                .unwrap_or_else(|_| args.oci_images.clone()),
            limit: cfg.call_timeout,
        })),
    }
}

async fn connect_node(bundle: bundle::Bundle, args: &NodeArgs) -> Result<Node, Exit> {
    let cfg = node_config(args);
    let docker = containers(args, &cfg);
    docker.ping().await.map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    let node = Node::new(bundle, docker, cfg).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Refused
    })?;
    node.ovs().ping().await.map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    Ok(node)
}

fn run_apply(args: &ApplyArgs) -> Exit {
    let bundle = match load_one_node(&args.bundle, args.color) {
        Ok(b) => b,
        Err(exit) => return exit,
    };
    let Some(rt) = runtime() else {
        return Exit::Usage;
    };
    let Some(config) = args.journal.clock() else {
        return Exit::Usage;
    };
    let now = kalki_shim::run::now_ms();
    let engine = if args.journal.journal.is_file() {
        match kalki_shim::journal::Journal::open(&args.journal.journal)
            .and_then(|j| j.replay(&bundle, config, now))
        {
            Ok((engine, _)) => engine,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
        }
    } else {
        kalki_shim::engine::Engine::new(&bundle, config, now)
    };
    let states = engine.states();
    rt.block_on(async {
        let node = match connect_node(bundle, &args.node).await {
            Ok(n) => n,
            Err(exit) => return exit,
        };
        let plan = match node.plan(&states).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
        };
        let site = node.bundle().manifest.site.clone();
        if plan.is_empty() {
            println!("site `{site}`: nothing to change");
            return Exit::Ok;
        }
        let steps = node.describe(&plan);
        println!(
            "site `{site}`: {} change{}{}",
            steps.len(),
            if steps.len() == 1 { "" } else { "s" },
            if args.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        );
        // Every step of a dry run or a small plan; a large one by kind (--dry-run
        // lists every step).
        if args.dry_run || steps.len() <= LISTED_STEPS {
            for s in &steps {
                println!("  {s}");
            }
        } else {
            for (kind, n) in plan.kinds() {
                println!("  {n} × {kind}");
            }
        }
        if args.dry_run {
            return Exit::Ok;
        }
        let shown = ApplyProgress::default();
        let result = node.execute_with(&plan, &|p| shown.update(p)).await;
        shown.finish();
        match result {
            Ok(report) => {
                let mut exit = Exit::Ok;
                for (device, closed, reason) in &report.failed_closed {
                    let d = &node.bundle().manifest.devices[*device];
                    let installed = match closed {
                        Closed::State(s) => {
                            format!("its most restrictive state `{}`", d.states[*s].name)
                        }
                        Closed::NoFlows => "no flows (all its traffic is dropped)".to_string(),
                    };
                    eprintln!(
                        "error: `{}` failed closed: {reason}; installed {installed}",
                        d.name
                    );
                    exit = Exit::Refused;
                }
                for (device, path, why) in &report.warm_failed {
                    eprintln!(
                        "warning: `{}`: µmbox {path} of a next state not started (a change to that state will start it): {why}",
                        node.bundle().manifest.devices[*device].name
                    );
                }
                if exit == Exit::Ok {
                    println!("applied");
                }
                exit
            }
            Err(e) => {
                eprintln!("error: {e}; the node may be partly applied; run apply again");
                Exit::Usage
            }
        }
    })
}

/// Steps `apply` lists one by one; more are counted by kind.
const LISTED_STEPS: usize = 40;

/// How far `apply` has come: a progress bar with counts, rate and time left on a terminal
/// (standard error), and one line per phase at its end whatever standard error is.
#[derive(Default)]
struct ApplyProgress {
    current: std::sync::Mutex<
        Option<(
            node::Phase,
            indicatif::ProgressBar,
            std::time::Instant,
            node::Progress,
        )>,
    >,
}

impl ApplyProgress {
    fn update(&self, p: node::Progress) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if current
            .as_ref()
            .is_some_and(|(phase, ..)| *phase != p.phase)
        {
            if let Some(done) = current.take() {
                Self::close(done);
            }
        }
        let entry = current.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(p.total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg:18} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(p.phase.as_str());
            (p.phase, bar, std::time::Instant::now(), p)
        });
        entry.1.set_position(p.done as u64);
        entry.3 = p;
    }

    fn close(
        (phase, bar, start, p): (
            node::Phase,
            indicatif::ProgressBar,
            std::time::Instant,
            node::Progress,
        ),
    ) {
        bar.finish_and_clear();
        let s = start.elapsed().as_secs_f64();
        let failed = if p.failed > 0 {
            format!(", {} failed", p.failed)
        } else {
            String::new()
        };
        eprintln!(
            "{}: {}/{} in {s:.1} s ({:.0}/s){failed}",
            phase.as_str(),
            p.done,
            p.total,
            p.done as f64 / s.max(1e-3)
        );
    }

    fn finish(&self) {
        if let Some(done) = self.current.lock().ok().and_then(|mut c| c.take()) {
            Self::close(done);
        }
    }
}

/// A client of the API from the command line's options and the environment.
fn client(args: &ClientArgs) -> Result<Client, Exit> {
    let api = args
        .api
        .clone()
        .or_else(|| std::env::var("KALKI_API").ok())
        .unwrap_or_else(|| DEFAULT_API.to_string());
    let endpoint = match api.parse::<Endpoint>() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: --api: {e}");
            return Err(Exit::Usage);
        }
    };
    let token_file = args
        .token_file
        .clone()
        .or_else(|| std::env::var_os("KALKI_TOKEN_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
    let token = match Token::from_file(&token_file) {
        Ok(t) => t,
        Err(e) => {
            report(Color::Auto, [Report::new(e)]);
            return Err(Exit::Usage);
        }
    };
    Ok(Client::new(endpoint, token, args.timeout))
}

/// Runs one request on a small runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = Result<T, ClientError>>) -> Result<T, Exit> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return Err(Exit::Usage);
        }
    };
    rt.block_on(f).map_err(|e| match e {
        ClientError::Refused { status, body } if status < 500 => {
            let mut out = String::new();
            for item in &body.errors {
                out.push_str(&format!("error[{}]: {}\n", item.code, item.message));
                if let Some(h) = &item.help {
                    out.push_str(&format!("  help: {h}\n"));
                }
            }
            if body.errors.is_empty() {
                out.push_str(&format!(
                    "error[{}]: {}\n",
                    body.error.code, body.error.message
                ));
            }
            let _ = std::io::stderr().write_all(out.as_bytes());
            Exit::Refused
        }
        other => {
            eprintln!("error: {other}");
            Exit::Usage
        }
    })
}

fn print(text: &str) -> Exit {
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Usage,
    }
}

fn run_status(args: &StatusArgs) -> Exit {
    let client = match client(&args.client) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let report = match block_on(client.status()) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let printed = if args.json {
        print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ))
    } else {
        print(&api::render_status(&report))
    };
    if printed != Exit::Ok {
        return printed;
    }
    match enforcement::worst(report.devices.iter().map(|d| &d.enforcement)) {
        None => Exit::Ok,
        Some(Enforcement::FailedClosed { .. }) => Exit::FailedClosed,
        Some(_) => Exit::NotEnforced,
    }
}

fn accepted(result: Result<Accepted, Exit>) -> Exit {
    match result {
        Ok(a) => print(&api::render_accepted(&a)),
        Err(e) => e,
    }
}

/// `VAR=VALUE`: `true` and `false` are booleans, integers are integers, anything else
/// is an enum member's name (a decimal number is sent as one, for the shim to refuse).
fn parse_value(text: &str) -> serde_json::Value {
    match text {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        _ => {
            if let Ok(i) = text.parse::<i64>() {
                serde_json::Value::from(i)
            } else if let Some(n) = text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && text.contains('.'))
                .and_then(serde_json::Number::from_f64)
            {
                serde_json::Value::Number(n)
            } else {
                serde_json::Value::String(text.to_string())
            }
        }
    }
}

fn run_event(args: &EventArgs) -> Exit {
    let mut values = BTreeMap::new();
    for pair in &args.values {
        let Some((var, value)) = pair.split_once('=').filter(|(v, _)| !v.is_empty()) else {
            eprintln!("error: `{pair}` is not `VAR=VALUE`");
            return Exit::Usage;
        };
        if values.insert(var.to_string(), parse_value(value)).is_some() {
            eprintln!("error: `{var}` is given twice");
            return Exit::Usage;
        }
    }
    let client = match client(&args.client) {
        Ok(c) => c,
        Err(e) => return e,
    };
    accepted(block_on(client.reading(&args.device, values)))
}

fn run_alert(args: &AlertArgs) -> Exit {
    let client = match client(&args.client) {
        Ok(c) => c,
        Err(e) => return e,
    };
    accepted(block_on(client.alert(
        &args.device,
        &args.alert,
        args.source.as_deref(),
    )))
}

fn run_reset(args: &ResetArgs) -> Exit {
    let client = match client(&args.client) {
        Ok(c) => c,
        Err(e) => return e,
    };
    accepted(block_on(client.reset(&args.device)))
}

/// `±HH:MM` → the local time of day at Unix time 0, in milliseconds.
fn day_offset(text: &str) -> Option<u64> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1i64, &text[1..]),
        b'-' => (-1i64, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    let day = 86_400_000i64;
    Some((sign * (h * 3_600_000 + m * 60_000)).rem_euclid(day) as u64)
}

fn run_run(args: &RunArgs) -> Exit {
    init_log(args.log_format, args.log_level);
    let Some(clock) = args.journal.clock() else {
        return Exit::Usage;
    };
    let webhook = match &args.command_webhook {
        Some(url) => match kalki_shim::sink::Webhook::parse(url, Duration::from_secs(5)) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("error: --command-webhook {e}");
                return Exit::Usage;
            }
        },
        None => None,
    };
    let (token, endpoint) = match serving(args.token_file.as_deref(), &args.listen) {
        Ok(t) => t,
        Err(exit) => return exit,
    };
    let bundle = match load_one_node(&args.bundle, args.color) {
        Ok(b) => b,
        Err(exit) => return exit,
    };
    let mqtt = match mqtt_config(&args.mqtt, &bundle) {
        Ok(m) => m,
        Err(exit) => return exit,
    };
    let Some(rt) = runtime() else {
        return Exit::Usage;
    };
    rt.block_on(async {
        let exposure = if args.listen_any {
            api::Exposure::AnyAddress
        } else {
            api::Exposure::LoopbackOnly
        };
        let listener = match api::Listener::bind(&endpoint, exposure).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
        };
        // Unlike `apply`, `run` starts whatever the node's state: it serves, says which
        // devices are not enforced, and keeps trying to bring the node to the policy.
        let cfg = node_config(&args.node);
        let docker = containers(&args.node, &cfg);
        let node = match Node::new(bundle, docker, cfg) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Refused;
            }
        };
        if let Err(e) = node.docker().ping().await {
            tracing::warn!(event = "unreachable", error = %e, "WARNING: {e}; retrying");
        }
        if let Err(e) = node.ovs().ping().await {
            tracing::warn!(event = "unreachable", error = %e, "WARNING: {e}; retrying");
        }
        if let Some(dir) = args
            .journal
            .journal
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("error: cannot create `{}`: {e}", dir.display());
                return Exit::Usage;
            }
        }
        let cfg = kalki_shim::run::RunConfig {
            journal: args.journal.journal.clone(),
            listener,
            token,
            webhook,
            clock,
            reconcile_interval: args.reconcile_interval,
            mqtt,
        };
        ended(
            kalki_shim::run::run(node, cfg, shutdown_signal()).await,
            Exit::Usage,
        )
    })
}

fn run_controller(args: &ControllerArgs) -> Exit {
    init_log(args.log_format, args.log_level);
    let Some(clock) = args.clock.clock() else {
        return Exit::Usage;
    };
    if let Err(e) = args.etcd.check_key() {
        eprintln!("error: {e}");
        return Exit::Usage;
    }
    let (token, endpoint) = match serving(args.token_file.as_deref(), &args.listen) {
        Ok(t) => t,
        Err(exit) => return exit,
    };
    let bundle = match load_bundle(&args.bundle, args.color) {
        Ok(b) => b,
        Err(exit) => return exit,
    };
    // No node to decide postures for: its status could only say "unreachable".
    if bundle.manifest.nodes.is_empty() {
        eprintln!(
            "error: site `{}` runs on one node (its policy declares no `node`): run it with `kalki-shim run`",
            bundle.manifest.site
        );
        return Exit::Refused;
    }
    // What the controller does not carry, refused unless the operator accepts it: the
    // site would not behave as verified, and nothing would say so.
    if let Err(refused) =
        bundle::controller_ready(&bundle, args.without_commands, args.without_mqtt)
    {
        report(args.color, refused.into_iter().map(Report::new));
        eprintln!("bundle `{}` refused", args.bundle.display());
        return Exit::Refused;
    }
    let Some(rt) = runtime() else {
        return Exit::Usage;
    };
    let cfg = kalki_shim::cluster::controller::ControllerConfig {
        etcd: args.etcd.config(),
        id: args.etcd.id(),
        endpoint,
        exposure: if args.listen_any {
            api::Exposure::AnyAddress
        } else {
            api::Exposure::LoopbackOnly
        },
        token,
        clock,
        lease_ttl: args.etcd.lease_ttl,
    };
    rt.block_on(async {
        ended(
            kalki_shim::cluster::controller::controller(bundle, cfg, shutdown_signal()).await,
            Exit::Refused,
        )
    })
}

fn run_agent(args: &AgentArgs) -> Exit {
    init_log(args.log_format, args.log_level);
    if let Err(e) = args.etcd.check_key() {
        eprintln!("error: {e}");
        return Exit::Usage;
    }
    if !args.bundle.join(bundle::MANIFEST).is_file() {
        eprintln!(
            "error: `{}` is not a bundle directory (no {})",
            args.bundle.display(),
            bundle::MANIFEST
        );
        return Exit::Usage;
    }
    // The site's bundle checked whole (its manifest digests every node's files), then
    // this node's part of it.
    let reader = kalki_shim::bundle::DirReader::new(&args.bundle);
    let (site, bundle) = match bundle::load_node(&reader, &args.node) {
        Ok(b) => b,
        Err(errors) => {
            let n = errors.len();
            report(args.color, errors.into_iter().map(Report::new));
            eprintln!(
                "bundle `{}` refused for node `{}` ({n} problem{})",
                args.bundle.display(),
                args.node,
                if n == 1 { "" } else { "s" }
            );
            return Exit::Refused;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.state_dir) {
        eprintln!("error: cannot create `{}`: {e}", args.state_dir.display());
        return Exit::Usage;
    }
    let Some(rt) = runtime() else {
        return Exit::Usage;
    };
    let cfg = kalki_shim::cluster::agent::AgentConfig {
        etcd: args.etcd.config(),
        site: site.manifest.site.clone(),
        node: args.node.clone(),
        id: args.etcd.id(),
        reconcile_interval: args.reconcile_interval,
        lease_ttl: args.etcd.lease_ttl,
        cache: args.state_dir.join("postures.json"),
    };
    rt.block_on(async {
        let ncfg = node_config(&args.node_args);
        let docker = containers(&args.node_args, &ncfg);
        let node = match Node::new(bundle, docker, ncfg) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Refused;
            }
        };
        ended(
            kalki_shim::cluster::agent::agent(node, cfg, shutdown_signal()).await,
            Exit::Refused,
        )
    })
}

/// A serving command's end: `stopped` logged on a clean stop, else the error and `failure`.
fn ended<E: std::fmt::Display>(result: Result<(), E>, failure: Exit) -> Exit {
    match result {
        Ok(()) => {
            tracing::info!(event = "stopped", "stopped");
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            failure
        }
    }
}

/// What a server of the API needs from its flags: the token (`--token-file`, else
/// `$KALKI_TOKEN_FILE`, else the default file) and where to listen (`--listen`).
fn serving(token_file: Option<&std::path::Path>, listen: &str) -> Result<(Token, Endpoint), Exit> {
    let token_file = token_file
        .map(std::path::Path::to_path_buf)
        .or_else(|| std::env::var_os("KALKI_TOKEN_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
    let token = Token::from_file(&token_file).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })?;
    let endpoint = listen.parse::<Endpoint>().map_err(|e| {
        eprintln!("error: --listen: {e}");
        Exit::Usage
    })?;
    Ok((token, endpoint))
}

/// The broker settings, checked (password and CA files read now); a bundle that reads
/// MQTT topics without a broker is refused unless `--no-mqtt` says so: the shim would
/// otherwise run deaf to those devices.
fn mqtt_config(
    args: &MqttArgs,
    bundle: &bundle::Bundle,
) -> Result<Option<kalki_shim::mqtt::MqttConfig>, Exit> {
    let topics = kalki_model::telemetry::Topics::new(&bundle.manifest);
    let Some(url) = &args.mqtt else {
        if !topics.is_empty() && !args.no_mqtt {
            let devices: Vec<&str> = bundle
                .manifest
                .devices
                .iter()
                .filter(|d| d.telemetry.as_ref().is_some_and(|t| !t.topics.is_empty()))
                .map(|d| d.name.as_str())
                .collect();
            let n = topics.topics().count();
            eprintln!(
                "error: the bundle reads {n} MQTT topic{} (device{} `{}`) but no broker is given\n  help: give the broker with --mqtt mqtt://HOST:PORT, or pass --no-mqtt to run without it (those devices then get readings only from the API, and their `after ... silent` timers run out)",
                if n == 1 { "" } else { "s" },
                if devices.len() == 1 { "" } else { "s" },
                devices.join("`, `")
            );
            return Err(Exit::Usage);
        }
        if !topics.is_empty() {
            let n = topics.topics().count();
            tracing::warn!(
                event = "no_mqtt",
                topics = n,
                "--no-mqtt: the bundle's {n} MQTT topics are not read; those devices get readings only from the API"
            );
        }
        return Ok(None);
    };
    let client_id = args
        .mqtt_client_id
        .clone()
        .unwrap_or_else(|| kalki_shim::mqtt::default_client_id(&bundle.manifest.site));
    match kalki_shim::mqtt::MqttConfig::new(
        url,
        client_id,
        args.mqtt_username.clone(),
        args.mqtt_password_file.as_deref(),
        args.mqtt_ca_file.as_deref(),
    ) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(Exit::Usage)
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What one state change and one debug line write in a format at a level.
    fn log(format: LogFormat, level: LogLevel) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = log_subscriber(format, level, move || w.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                event = "state_change",
                device = "d0",
                from = "normal",
                to = "suspicious",
                cause = "on port_scan",
                "`d0`: normal -> suspicious (on port_scan)"
            );
            tracing::debug!(event = "repair", step = "x", "x");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn the_human_log_is_the_sentences_it_always_was() {
        assert_eq!(
            log(LogFormat::Human, LogLevel::Info),
            "kalki-shim: `d0`: normal -> suspicious (on port_scan)\n"
        );
        assert_eq!(
            log(LogFormat::Human, LogLevel::Debug),
            "kalki-shim: `d0`: normal -> suspicious (on port_scan)\nkalki-shim: x\n"
        );
        assert_eq!(log(LogFormat::Human, LogLevel::Warn), "");
    }

    #[test]
    fn the_json_log_is_one_object_a_line_with_the_fields_at_the_top() {
        let text = log(LogFormat::Json, LogLevel::Info);
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["event"], "state_change");
        assert_eq!(v["device"], "d0");
        assert_eq!(v["from"], "normal");
        assert_eq!(v["to"], "suspicious");
        assert_eq!(v["cause"], "on port_scan");
        assert_eq!(v["message"], "`d0`: normal -> suspicious (on port_scan)");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    }
}
