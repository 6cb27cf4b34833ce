//! The binary's loop: signals, interfaces, sockets, the clock and stdout around an
//! [`Engine`]. Single-threaded: one `poll` over the signal fd and the packet sockets.
// The µmbox's protocol is JSON lines on standard output, its log standard error
// (docs/umbox.md).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use crate::cli::{FunctionArgs, Layout, Level, Settings};
use crate::engine::{Engine, Outgoing, Side};
use crate::event::{alert_line, ready_line, stats_line, Alert};
use crate::functions::auth_proxy::Credentials;
use crate::functions::Verdict;
use crate::net::{self, PacketSocket, Recv, WaitError};
use crate::window::Ms;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Frames read from one socket before the others get a turn.
const BATCH: usize = 64;
/// Room for the largest frame a packet socket can hand over (64 KiB GSO frames).
const FRAME_BUF: usize = 1 << 17;
/// Housekeeping period.
const TICK: Ms = 1000;
/// At most one log line per this long for a repeated I/O error.
const ERROR_LOG_EVERY: Ms = 10_000;

/// Logs to stderr, never stdout.
#[derive(Debug, Clone)]
pub struct Log {
    pub level: Level,
    pub name: &'static str,
}

impl Log {
    pub fn at(&self, level: Level, msg: &str) {
        if level <= self.level {
            let tag = match level {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "info",
                Level::Debug => "debug",
            };
            eprintln!("kalki-umbox {}: {tag}: {msg}", self.name);
        }
    }
    pub fn info(&self, msg: &str) {
        self.at(Level::Info, msg)
    }
    pub fn warn(&self, msg: &str) {
        self.at(Level::Warn, msg)
    }
}

/// The JSON lines on stdout, flushed one by one (the shim follows them live).
struct Lines {
    out: std::io::Stdout,
    failed: bool,
}

impl Lines {
    fn write(&mut self, line: &str, log: &Log) {
        let mut o = self.out.lock();
        let r = writeln!(o, "{line}").and_then(|_| o.flush());
        if let Err(e) = r {
            if !self.failed {
                log.at(Level::Error, &format!("cannot write to stdout: {e}"));
                self.failed = true;
            }
        }
    }
}

/// Why the µmbox stopped with a failure (exit 1).
#[derive(Debug)]
pub struct Failure(pub String);

fn fail<T>(msg: String) -> Result<T, Failure> {
    Err(Failure(msg))
}

/// How the loop ended without a failure.
enum Stop {
    Signal(Signal),
}

struct Socks {
    /// (socket, side it is, index of the socket to forward to)
    list: Vec<(PacketSocket, Side, Option<usize>)>,
}

fn signals() -> Result<SignalFd, Failure> {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1] {
        mask.add(s);
    }
    // Blocked signals stay pending and are read from the fd; as PID 1 in a container
    // this is also what makes SIGTERM stop the µmbox at all.
    mask.thread_block()
        .or_else(|e| fail(format!("cannot block signals: {e}")))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .or_else(|e| fail(format!("cannot open a signalfd: {e}")))
}

/// The signals waiting on the fd.
fn pending(sfd: &SignalFd) -> Vec<Signal> {
    let mut v = Vec::new();
    while let Ok(Some(info)) = sfd.read_signal() {
        if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
            v.push(s);
        }
    }
    v
}

/// Reads auth-proxy's credentials file. Its content is never logged.
fn credentials(path: &str) -> Result<Credentials, Failure> {
    let what = format!("the proxy credentials `{path}` (KALKI_PROXY_CREDENTIALS)");
    let bytes = std::fs::read(path).or_else(|e| fail(format!("cannot read {what}: {e}")))?;
    let text = String::from_utf8(bytes).or_else(|_| fail(format!("{what}: not UTF-8 text")))?;
    Credentials::parse(&text).or_else(|e| fail(format!("{what}: {e}")))
}

/// Runs the function until SIGTERM or SIGINT.
pub fn run(mut function: FunctionArgs, settings: Settings, log: &Log) -> Result<(), Failure> {
    // Fail closed, before anything else: an auth-proxy without credentials never says
    // it is ready, so the runtime never moves traffic onto it.
    if let Some(path) = &settings.credentials {
        let c = credentials(path)?;
        log.info(&format!("{} proxy credential(s) from `{path}`", c.len()));
        if let FunctionArgs::AuthProxy(a) = &mut function {
            a.credentials = c;
        }
    }
    let sfd = signals()?;
    let start = Instant::now();
    let clock = move || start.elapsed().as_millis() as Ms;
    let mut lines = Lines {
        out: std::io::stdout(),
        failed: false,
    };

    let names = settings.layout.names();
    log.info(&format!(
        "waiting for interface(s) {} (up to {} ms)",
        names.join(", "),
        settings.wait_timeout
    ));
    let ifaces = loop {
        // Wait in short slices so that SIGTERM during the wait is honoured.
        let left = settings.wait_timeout.saturating_sub(clock());
        match net::wait_for(&names, Duration::from_millis(left.min(200))) {
            Ok(i) => break i,
            Err(WaitError::Lookup(e)) => return fail(format!("cannot list interfaces: {e}")),
            Err(WaitError::Timeout(nr)) => {
                if pending(&sfd)
                    .iter()
                    .any(|s| matches!(s, Signal::SIGTERM | Signal::SIGINT))
                {
                    log.info("stopped while waiting for interfaces");
                    return Ok(());
                }
                if left == 0 {
                    return fail(format!(
                        "interface(s) not ready after {} ms ({nr}); the runtime creates \
                         them after the container starts and names them in KALKI_INTERFACES",
                        settings.wait_timeout
                    ));
                }
            }
        }
    };

    let mut socks = Socks { list: Vec::new() };
    for i in &ifaces {
        let s = PacketSocket::open(i)
            .or_else(|e| fail(format!("cannot open a packet socket on `{}`: {e}", i.name)))?;
        socks.list.push((s, Side::Tap, None));
    }
    match settings.layout {
        Layout::Inline { .. } => {
            if let [a, b] = socks.list.as_mut_slice() {
                (a.1, a.2) = (Side::A, Some(1));
                (b.1, b.2) = (Side::B, Some(0));
            }
        }
        Layout::Tap(_) => {}
    }

    let name = function.name();
    let mut engine = Engine::new(name, function.build(), clock());
    lines.write(&ready_line(), log);
    log.info(&format!(
        "ready on {} ({})",
        names.join(", "),
        match settings.layout {
            Layout::Inline { .. } => "inline",
            Layout::Tap(_) => "tap",
        }
    ));

    let stop = serve(
        &sfd,
        &socks,
        &mut engine,
        &settings,
        &mut lines,
        log,
        &clock,
    )?;
    let Stop::Signal(s) = stop;
    lines.write(&stats_line(&engine.stats(clock(), false)), log);
    log.info(&format!("stopped by {s}"));
    Ok(())
}

fn serve(
    sfd: &SignalFd,
    socks: &Socks,
    engine: &mut Engine,
    settings: &Settings,
    lines: &mut Lines,
    log: &Log,
    clock: &dyn Fn() -> Ms,
) -> Result<Stop, Failure> {
    let mut buf = vec![0u8; FRAME_BUF];
    let mut alerts: Vec<Alert> = Vec::new();
    let mut injected: Vec<Outgoing> = Vec::new();
    let mut next_tick = clock() + TICK;
    let mut next_stats = settings.stats_interval.map(|i| clock() + i.max(1));
    let mut send_errors = SendErrors::default();

    loop {
        let now = clock();
        let due = next_stats.map_or(next_tick, |s| s.min(next_tick));
        let wait = u16::try_from(due.saturating_sub(now)).unwrap_or(u16::MAX);
        let mut fds: Vec<PollFd> = std::iter::once(PollFd::new(sfd.as_fd(), PollFlags::POLLIN))
            .chain(
                socks
                    .list
                    .iter()
                    .map(|(s, ..)| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
            )
            .collect();
        match poll(&mut fds, PollTimeout::from(wait)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return fail(format!("poll failed: {e}")),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);

        if ready[0] {
            for s in pending(sfd) {
                match s {
                    Signal::SIGUSR1 => lines.write(&stats_line(&engine.stats(clock(), false)), log),
                    other => return Ok(Stop::Signal(other)),
                }
            }
        }

        for (i, (sock, side, to)) in socks.list.iter().enumerate() {
            if !ready[i + 1] {
                continue;
            }
            let now = clock();
            for _ in 0..BATCH {
                let n = match sock.recv(&mut buf) {
                    Ok(Recv::Frame(n)) => n,
                    Ok(Recv::Ignored) => continue,
                    Ok(Recv::Empty) => break,
                    Err(Errno::ENETDOWN) => {
                        check_still_there(&sock.name)?;
                        log.warn(&format!("interface `{}` went down", sock.name));
                        break;
                    }
                    Err(e) => return fail(format!("receive on `{}` failed: {e}", sock.name)),
                };
                let frame = &buf[..n];
                let verdict = engine.frame(now, *side, frame, &mut alerts, &mut injected);
                if let (Verdict::Forward, Some(to)) = (verdict, to) {
                    if let Some((out, ..)) = socks.list.get(*to) {
                        if let Err(e) = out.send(frame) {
                            engine.send_failed();
                            send_errors.report(now, &out.name, e, log);
                        }
                    }
                }
                // Frames the function built in response, after the frame itself.
                for o in injected.drain(..) {
                    let out = socks.list.iter().find(|(_, s, _)| *s == o.side);
                    if let Some((out, ..)) = out {
                        if let Err(e) = out.send(&o.frame) {
                            engine.inject_failed();
                            send_errors.report(now, &out.name, e, log);
                        }
                    }
                }
                for a in alerts.drain(..) {
                    lines.write(&alert_line(&a), log);
                }
                for note in engine.notes() {
                    log.info(&note);
                }
            }
        }

        let now = clock();
        if now >= next_tick {
            engine.tick(now);
            next_tick = now + TICK;
        }
        if let (Some(at), Some(every)) = (next_stats, settings.stats_interval) {
            if now >= at {
                lines.write(&stats_line(&engine.stats(now, true)), log);
                next_stats = Some(now + every.max(1));
            }
        }
    }
}

/// Frames the kernel refused to send, logged at most every [`ERROR_LOG_EVERY`].
#[derive(Debug, Default)]
struct SendErrors {
    last_log: Option<Ms>,
    unlogged: u64,
}

impl SendErrors {
    fn report(&mut self, now: Ms, iface: &str, e: Errno, log: &Log) {
        self.unlogged += 1;
        if self.last_log.is_none_or(|t| now >= t + ERROR_LOG_EVERY) {
            log.warn(&format!(
                "cannot send on `{iface}`: {e} ({} frame(s) lost since the last report)",
                self.unlogged
            ));
            self.last_log = Some(now);
            self.unlogged = 0;
        }
    }
}

/// After ENETDOWN: an interface that is gone for good (its veth peer deleted) leaves the
/// socket deaf, so the µmbox fails and the runtime sees it.
fn check_still_there(name: &str) -> Result<(), Failure> {
    match net::lookup(&[name]) {
        Ok(found) if found.first().is_some_and(Option::is_some) => Ok(()),
        Ok(_) => fail(format!("interface `{name}` disappeared")),
        Err(e) => fail(format!("cannot list interfaces: {e}")),
    }
}
