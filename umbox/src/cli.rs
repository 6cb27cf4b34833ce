//! What the µmbox is told to do: the function and its flags from the command line (the
//! manifest's `args`), and its interfaces and settings from the environment. Pure: the
//! environment is passed in as a lookup function. Anything unknown or out of range is a
//! usage error (exit 2), so a catalog that drifts from this program fails loudly.

use crate::event::AlertKind;
use crate::functions::{
    anti_dos, auth_proxy, brute_force, fake_replies, ids, ip_block, login_monitor, sniffer,
    xmas_block, Function, Mode,
};
use crate::window::Ms;
use clap::{Parser, Subcommand};

pub const AFTER_HELP: &str = "\
Environment:
  KALKI_INTERFACES            comma-separated interfaces: `a,b` inline (a faces the device),
                              `tap` for a tap; default from the function's mode
  KALKI_INTERFACE_TIMEOUT_MS  how long to wait for them to exist and be up (30000)
  KALKI_STATS_INTERVAL_MS     ms between stats lines, 0 for none (60000; the sniffer
                              uses --stats and --stats-interval instead)
  LOG_LEVEL                   error, warn, info (default) or debug; logs go to stderr
  KALKI_PROXY_CREDENTIALS     auth-proxy only: the file of `user:password` lines it accepts
                              (default /run/secrets/proxy-credentials); missing, unreadable
                              or without an entry: exit 1 before the ready line

Output (stdout, one JSON object per line):
  {\"kalki\":\"ready\"}  {\"kalki\":\"alert\",\"alert\":NAME,\"source\":IP,...}  {\"kalki\":\"stats\",...}
  SIGUSR1 writes a stats line now; SIGTERM or SIGINT writes one and exits.

Exit codes:
  0  stopped by SIGTERM or SIGINT
  1  runtime failure (interfaces missing or down after the timeout, socket errors,
     auth-proxy's credentials file missing, unreadable or empty)
  2  usage error (unknown function or flag, bad value, bad environment)";

#[derive(Debug, Parser)]
#[command(
    name = "kalki-umbox",
    version,
    about = "The Kalki µmbox: one network function on raw interfaces (multi-call: the first argument picks it)",
    after_help = AFTER_HELP,
    disable_help_subcommand = true,
    subcommand_value_name = "FUNCTION",
    subcommand_help_heading = "Functions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub function: FunctionArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum FunctionArgs {
    /// Tap: per-peer packet statistics and port-scan detection.
    Sniffer(sniffer::Args),
    /// Tap: Snort-style detection of port scans, brute force and Xmas scans.
    Ids(ids::Args),
    /// Inline: connection or Hue API brute force, optional blocking; the device's own
    /// traffic from disallowed ports.
    BruteForce(brute_force::Args),
    /// Inline: connection and packet-rate limits.
    AntiDos(anti_dos::Args),
    /// Inline: HTTP Basic authentication in front of the device's web port; failed,
    /// factory-credential and repeated logins.
    AuthProxy(auth_proxy::Args),
    /// Tap: bursts of logins and factory credentials.
    LoginMonitor(login_monitor::Args),
    /// Inline: isolates the device and answers its control protocol in its stead.
    FakeReplies(fake_replies::Args),
    /// Inline: drops traffic from and to listed addresses.
    IpBlock(ip_block::Args),
    /// Inline: drops TCP Xmas packets (FIN+PSH+URG).
    XmasBlock(xmas_block::Args),
}

impl FunctionArgs {
    /// The name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            FunctionArgs::Sniffer(_) => "sniffer",
            FunctionArgs::Ids(_) => "ids",
            FunctionArgs::BruteForce(_) => "brute-force",
            FunctionArgs::AntiDos(_) => "anti-dos",
            FunctionArgs::AuthProxy(_) => "auth-proxy",
            FunctionArgs::LoginMonitor(_) => "login-monitor",
            FunctionArgs::FakeReplies(_) => "fake-replies",
            FunctionArgs::IpBlock(_) => "ip-block",
            FunctionArgs::XmasBlock(_) => "xmas-block",
        }
    }

    /// Where the catalog puts it.
    pub fn mode(&self) -> Mode {
        match self {
            FunctionArgs::Sniffer(_) | FunctionArgs::Ids(_) | FunctionArgs::LoginMonitor(_) => {
                Mode::Tap
            }
            _ => Mode::Inline,
        }
    }

    /// Every alert it can raise with these flags (the catalog's `emits`).
    pub fn emits(&self) -> Vec<AlertKind> {
        use AlertKind::*;
        match self {
            FunctionArgs::Sniffer(_) => vec![PortScan],
            FunctionArgs::Ids(_) => vec![PortScan, XmasScan, BruteForce],
            FunctionArgs::BruteForce(_) => vec![BruteForce, AbnormalTraffic],
            FunctionArgs::AntiDos(_) => vec![DosAttempt],
            FunctionArgs::AuthProxy(a) => {
                let mut v = vec![FailedLogin, DefaultCredentials, MaxLoginAttempts];
                if a.block {
                    v.push(BlockedIp);
                }
                v
            }
            FunctionArgs::LoginMonitor(_) => vec![MaxLoginAttempts, DefaultCredentials],
            FunctionArgs::FakeReplies(_) => vec![InterceptedCommand],
            FunctionArgs::IpBlock(_) => vec![BlockedIp],
            FunctionArgs::XmasBlock(_) => vec![XmasScan],
        }
    }

    /// The periodic stats interval: the sniffer's own flags, else the environment's.
    pub fn stats_interval(&self, from_env: Option<Ms>) -> Option<Ms> {
        match self {
            FunctionArgs::Sniffer(a) => a.stats.then_some(a.stats_interval),
            _ => from_env,
        }
    }

    pub fn build(self) -> Box<dyn Function> {
        match self {
            FunctionArgs::Sniffer(a) => Box::new(sniffer::Sniffer::new(a)),
            FunctionArgs::Ids(a) => Box::new(ids::Ids::new(a)),
            FunctionArgs::BruteForce(a) => Box::new(brute_force::BruteForce::new(a)),
            FunctionArgs::AntiDos(a) => Box::new(anti_dos::AntiDos::new(a)),
            FunctionArgs::AuthProxy(a) => Box::new(auth_proxy::AuthProxy::new(a)),
            FunctionArgs::LoginMonitor(a) => Box::new(login_monitor::LoginMonitor::new(a)),
            FunctionArgs::FakeReplies(a) => Box::new(fake_replies::FakeReplies::new(a)),
            FunctionArgs::IpBlock(a) => Box::new(ip_block::IpBlock::new(a)),
            FunctionArgs::XmasBlock(_) => Box::new(xmas_block::XmasBlock),
        }
    }
}

/// Parses the command line (program name first). `--help` and `--version` come back as
/// errors too; clap tells them apart (`Error::use_stderr`, `Error::exit_code`).
pub fn parse<I, T>(args: I) -> Result<FunctionArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args).map(|c| c.function)
}

/// The interfaces a µmbox uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `a` faces the device, `b` the uplink; frames are forwarded between them.
    Inline { a: String, b: String },
    /// Copies arrive on one interface; nothing is ever sent.
    Tap(String),
}

impl Layout {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Layout::Inline { a, b } => vec![a, b],
            Layout::Tap(t) => vec![t],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// Settings from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub layout: Layout,
    pub wait_timeout: Ms,
    pub stats_interval: Option<Ms>,
    pub log_level: Level,
    /// auth-proxy: the credentials file to read before anything else.
    pub credentials: Option<String>,
}

pub const DEFAULT_WAIT_TIMEOUT: Ms = 30_000;
pub const DEFAULT_STATS_INTERVAL: Ms = 60_000;

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

fn layout(value: Option<&str>, f: &FunctionArgs) -> Result<Layout, String> {
    let names: Vec<&str> = match value.map(str::trim) {
        None | Some("") => match f.mode() {
            Mode::Inline => vec!["a", "b"],
            Mode::Tap => vec!["tap"],
        },
        Some(v) => v.split(',').map(str::trim).collect(),
    };
    if let Some(bad) = names.iter().find(|n| !valid_ifname(n)) {
        return Err(format!(
            "KALKI_INTERFACES: `{bad}` is not an interface name"
        ));
    }
    match names.as_slice() {
        [a, b] if a == b => Err(format!("KALKI_INTERFACES: `{a}` is named twice")),
        [a, b] => Ok(Layout::Inline {
            a: a.to_string(),
            b: b.to_string(),
        }),
        [t] if f.mode() == Mode::Tap => Ok(Layout::Tap(t.to_string())),
        [t] => Err(format!(
            "KALKI_INTERFACES: `{}` is an inline function and needs two interfaces \
             (device side first, e.g. `a,b`), not `{t}`",
            f.name()
        )),
        _ => Err(format!(
            "KALKI_INTERFACES: expected one interface (tap) or two (inline), got `{}`",
            names.join(",")
        )),
    }
}

fn millis(name: &str, value: Option<String>, default: Ms) -> Result<Ms, String> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}: `{v}` is not a number of milliseconds")),
    }
}

/// Reads the settings through `env` (a lookup such as `std::env::var(..).ok()`).
pub fn settings(
    env: impl Fn(&str) -> Option<String>,
    f: &FunctionArgs,
) -> Result<Settings, String> {
    let layout = layout(env("KALKI_INTERFACES").as_deref(), f)?;
    let wait_timeout = millis(
        "KALKI_INTERFACE_TIMEOUT_MS",
        env("KALKI_INTERFACE_TIMEOUT_MS"),
        DEFAULT_WAIT_TIMEOUT,
    )?;
    let every = millis(
        "KALKI_STATS_INTERVAL_MS",
        env("KALKI_STATS_INTERVAL_MS"),
        DEFAULT_STATS_INTERVAL,
    )?;
    let log_level = match env("LOG_LEVEL")
        .map(|l| l.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("info") => Level::Info,
        Some("error") => Level::Error,
        Some("warn") | Some("warning") => Level::Warn,
        Some("debug") | Some("trace") => Level::Debug,
        Some(other) => {
            return Err(format!(
                "LOG_LEVEL: `{other}` is not one of error, warn, info, debug"
            ))
        }
    };
    let credentials = match f {
        FunctionArgs::AuthProxy(_) => Some(
            env("KALKI_PROXY_CREDENTIALS")
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| auth_proxy::DEFAULT_CREDENTIALS_FILE.to_string()),
        ),
        _ => None,
    };
    Ok(Settings {
        layout,
        wait_timeout,
        stats_interval: f.stats_interval((every > 0).then_some(every)),
        log_level,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use clap::error::ErrorKind;
    use std::collections::HashMap;

    fn p(args: &str) -> Result<FunctionArgs, clap::Error> {
        parse(std::iter::once("kalki-umbox").chain(args.split_whitespace()))
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn functions_and_defaults() {
        let f = p("sniffer").unwrap();
        assert_eq!((f.name(), f.mode()), ("sniffer", Mode::Tap));
        assert_eq!(f.stats_interval(None), Some(60_000));
        let f = p("sniffer --stats false --stats-interval 5").unwrap();
        assert_eq!(f.stats_interval(Some(1)), None);
        let f = p("brute-force --service hue_api --block true --allowed-ports 80,443").unwrap();
        let FunctionArgs::BruteForce(a) = &f else {
            panic!()
        };
        assert!(a.block && a.service == brute_force::Service::HueApi);
        assert_eq!(a.allowed_ports.0, [80, 443]);
        assert_eq!(f.mode(), Mode::Inline);
        assert_eq!(f.stats_interval(Some(7)), Some(7));
        let f = p("auth-proxy --block --block-for 1000").unwrap();
        assert!(f.emits().contains(&AlertKind::BlockedIp));
        assert!(!p("auth-proxy")
            .unwrap()
            .emits()
            .contains(&AlertKind::BlockedIp));
        assert_eq!(p("xmas-block").unwrap().name(), "xmas-block");
    }

    #[test]
    fn strict_flags() {
        let kind = |a: &str| p(a).unwrap_err().kind();
        assert_eq!(kind("sniffer --scan-port 5"), ErrorKind::UnknownArgument);
        assert_eq!(kind("tcpdump"), ErrorKind::InvalidSubcommand);
        assert_eq!(kind("sniffer --stats yes"), ErrorKind::InvalidValue);
        assert_eq!(kind("sniffer --scan-ports 4"), ErrorKind::ValueValidation);
        assert_eq!(
            kind("sniffer --scan-ports 1001"),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind("sniffer --scan-window 0"), ErrorKind::ValueValidation);
        assert_eq!(
            kind("sniffer --scan-window 60s"),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind("ids --ruleset snort"), ErrorKind::InvalidValue);
        assert_eq!(
            kind("brute-force --service hue-api"),
            ErrorKind::InvalidValue
        );
        assert_eq!(kind("anti-dos --conn-mask 33"), ErrorKind::ValueValidation);
        assert_eq!(
            kind("auth-proxy --block-for 5"),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(kind("ip-block"), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind("ip-block --addresses 10.0.0.300"),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind("xmas-block --extra"), ErrorKind::UnknownArgument);
        assert_eq!(kind("sniffer extra"), ErrorKind::UnknownArgument);
        assert_eq!(
            kind(""),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(kind("--help"), ErrorKind::DisplayHelp);
        // Usage errors exit 2; help exits 0.
        assert_eq!(p("sniffer --nope").unwrap_err().exit_code(), 2);
        assert_eq!(p("--help").unwrap_err().exit_code(), 0);
    }

    #[test]
    fn interfaces_from_the_environment() {
        let inline = p("xmas-block").unwrap();
        let tap = p("ids").unwrap();
        let s = settings(env(&[]), &inline).unwrap();
        assert_eq!(
            s.layout,
            Layout::Inline {
                a: "a".into(),
                b: "b".into()
            }
        );
        assert_eq!(
            (s.wait_timeout, s.stats_interval, s.log_level),
            (30_000, Some(60_000), Level::Info)
        );
        assert_eq!(
            settings(env(&[]), &tap).unwrap().layout,
            Layout::Tap("tap".into())
        );
        let s = settings(env(&[("KALKI_INTERFACES", " km7 , km8 ")]), &inline).unwrap();
        assert_eq!(s.layout.names(), ["km7", "km8"]);
        // A tap function may sit inline (it forwards everything); not the other way round.
        assert!(matches!(
            settings(env(&[("KALKI_INTERFACES", "a,b")]), &tap)
                .unwrap()
                .layout,
            Layout::Inline { .. }
        ));
        let err = settings(env(&[("KALKI_INTERFACES", "tap")]), &inline).unwrap_err();
        assert!(err.contains("inline function"), "{err}");
        for bad in ["a,a", "a,b,c", "a,", "averyveryverylongname", "a/b"] {
            assert!(
                settings(env(&[("KALKI_INTERFACES", bad)]), &inline).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_settings() {
        let f = p("ip-block --addresses 10.0.0.1").unwrap();
        let s = settings(
            env(&[
                ("KALKI_INTERFACE_TIMEOUT_MS", "1500"),
                ("KALKI_STATS_INTERVAL_MS", "0"),
                ("LOG_LEVEL", "DEBUG"),
            ]),
            &f,
        )
        .unwrap();
        assert_eq!(
            (s.wait_timeout, s.stats_interval, s.log_level),
            (1500, None, Level::Debug)
        );
        assert!(settings(env(&[("LOG_LEVEL", "loud")]), &f).is_err());
        assert!(settings(env(&[("KALKI_STATS_INTERVAL_MS", "1m")]), &f).is_err());
        assert_eq!(s.credentials, None);
    }

    #[test]
    fn the_proxy_credentials_file() {
        let f = p("auth-proxy").unwrap();
        let at = |pairs: &[(&str, &str)]| settings(env(pairs), &f).unwrap().credentials;
        assert_eq!(at(&[]).as_deref(), Some("/run/secrets/proxy-credentials"));
        assert_eq!(
            at(&[("KALKI_PROXY_CREDENTIALS", " ")]).as_deref(),
            Some("/run/secrets/proxy-credentials")
        );
        assert_eq!(
            at(&[("KALKI_PROXY_CREDENTIALS", "/x/creds")]).as_deref(),
            Some("/x/creds")
        );
        // Read by the binary into the function's arguments; none until then.
        let FunctionArgs::AuthProxy(a) = f else {
            panic!()
        };
        assert!(a.credentials.is_empty());
    }
}
