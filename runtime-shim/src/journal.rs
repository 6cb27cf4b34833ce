//! The shim's journal: every accepted input with its time, durably, in an embedded SQLite
//! database, so that a restarted shim resumes every device in the state it had; and for
//! audit and `status`, every state change with its cause, every command and its delivery,
//! every fail-closed posture.
//!
//! Event-sourced: the engine is deterministic, so the inputs alone give back its exact
//! state (states, holds, aggregate windows, alert counts). [`Journal::replay`] feeds them
//! to a fresh [`Engine`]; the effects are not executed again. The other tables are a
//! record, never read back into the engine. Schema, durability and replay semantics:
//! `docs/runtime.md`, "The journal".

use crate::bundle::Bundle;
use crate::codes;
use crate::engine::{Config, Engine, Input, InputError};
use miette::Diagnostic;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema this shim writes and reads (`PRAGMA user_version`). A journal of another
/// version is refused, never migrated silently.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE epoch (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    start_ms      INTEGER NOT NULL,
    day_offset_ms INTEGER NOT NULL
);
CREATE TABLE inputs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    t_ms          INTEGER NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    kind          TEXT NOT NULL,
    device        TEXT,
    input         TEXT NOT NULL
);
CREATE TABLE changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    after_seq  INTEGER,
    t_ms       INTEGER NOT NULL,
    device     TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    cause      TEXT NOT NULL
);
CREATE INDEX changes_by_device ON changes (device, id);
CREATE TABLE fail_closed (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    after_seq       INTEGER,
    t_ms            INTEGER NOT NULL,
    device          TEXT NOT NULL,
    state_installed TEXT NOT NULL,
    reason          TEXT NOT NULL
);
CREATE INDEX fail_closed_by_device ON fail_closed (device, id);
CREATE TABLE commands (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    after_seq INTEGER,
    t_ms      INTEGER NOT NULL,
    device    TEXT NOT NULL,
    command   TEXT NOT NULL,
    rule      TEXT NOT NULL,
    status    TEXT NOT NULL DEFAULT 'pending'
              CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts  INTEGER NOT NULL DEFAULT 0,
    error     TEXT
);
CREATE INDEX commands_pending ON commands (status) WHERE status = 'pending';
";

/// Who gave an operator input, by its sequence number: `api` for the API's token,
/// `console:ID` for a console session (`docs/runtime.md`, "Console"). Added to journals
/// of schema version 1 when they are opened (`IF NOT EXISTS`): an older shim ignores it,
/// and replay never reads it.
const ACTORS: &str = "
CREATE TABLE IF NOT EXISTS actors (
    seq INTEGER PRIMARY KEY,
    who TEXT NOT NULL
);
";

/// The clock the shim handles inputs under, by name: `Europe/Berlin` (`--time-zone`) or
/// `UTC+01:00` (`--utc-offset`). Added to journals of schema version 1 when they are
/// opened, like [`ACTORS`]; written at every replay, and compared with the clock of the
/// next (a change is reported, not refused: the operator chose it).
const CLOCK: &str = "
CREATE TABLE IF NOT EXISTS clock (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL
);
";

/// The name [`CLOCK`] keeps of a replay's clock.
fn clock_name(config: &Config) -> String {
    match &config.zone {
        Some(z) => z.name.clone(),
        None => fixed_offset_name(config.day_offset_ms),
    }
}

/// A fixed offset, as `--utc-offset` takes it (engine time is Unix time under `run`, so
/// the local time of day at time 0 is the offset; -12:00 to +14:00).
fn fixed_offset_name(day_offset_ms: u64) -> String {
    let minutes = i64::try_from((day_offset_ms % 86_400_000) / 60_000).unwrap_or(0);
    let minutes = if minutes > 14 * 60 {
        minutes - 1440
    } else {
        minutes
    };
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.abs();
    format!("UTC{sign}{:02}:{:02}", m / 60, m % 60)
}

/// One line of a device's history ([`Journal::history`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub t_ms: u64,
    /// `reading`, `alert`, `operator`, `change`, `fail_closed` or `command`.
    pub kind: String,
    /// What happened, in words.
    pub text: String,
}

/// The journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal `{path}`: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the journal `{path}` has schema version {found}; this shim reads version {SCHEMA_VERSION}"
    )]
    Version { path: PathBuf, found: i64 },
    #[error("journal: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("journal entry {seq} cannot be decoded: {message}")]
    Corrupt { seq: i64, message: String },
    #[error("{what} {value} does not fit the journal (at most {max})", max = i64::MAX)]
    OutOfRange { what: &'static str, value: u64 },
    #[error("the journal has no command {id}")]
    NoSuchCommand { id: u64 },
}

impl Diagnostic for JournalError {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(match self {
            JournalError::Open { .. } => codes::JOURNAL_OPEN,
            JournalError::Version { .. } => codes::JOURNAL_VERSION,
            JournalError::Sqlite(_) | JournalError::NoSuchCommand { .. } => codes::JOURNAL_IO,
            JournalError::Corrupt { .. } | JournalError::OutOfRange { .. } => {
                codes::JOURNAL_CORRUPT
            }
        }))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        let h = match self {
            JournalError::Version { .. } => {
                "use the shim that wrote it, or move the journal aside to start afresh (every device then starts in its initial state)"
            }
            JournalError::Open { .. } => {
                "the journal's directory must exist and be writable by the shim"
            }
            _ => return None,
        };
        Some(Box::new(h))
    }
}

/// When the journal's engine started and how its time maps to the time of day: replay
/// starts a fresh engine there, so timers that count from entering the initial state run
/// out when they did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub start_ms: u64,
    pub day_offset_ms: u64,
}

/// One journaled input.
#[derive(Debug, Clone, PartialEq)]
pub struct JournaledInput {
    pub seq: u64,
    pub t_ms: u64,
    /// The sha256 of the manifest of the bundle it was accepted under.
    pub bundle_sha256: String,
    pub input: Input,
}

/// How a command's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Failed { attempts: u32, error: String },
}

/// A journaled command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub id: u64,
    pub t_ms: u64,
    pub device: String,
    pub command: String,
    pub rule: String,
    /// `None` while pending.
    pub delivery: Option<Delivery>,
}

/// A device's latest state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub t_ms: u64,
    pub from: String,
    pub to: String,
    pub cause: String,
}

/// A device's latest fail-closed posture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailClosed {
    pub t_ms: u64,
    /// The state whose flows were installed instead (the most restrictive).
    pub state_installed: String,
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    /// The engine's start (journaled on the first replay of an empty journal).
    pub epoch: Option<Epoch>,
    /// The clock the journal's inputs were last handled under (a time zone, or a fixed
    /// offset from UTC), when it differs from the one replay was given, and that one:
    /// clock windows may fall differently than they did when the inputs were taken.
    pub clock_changed: Option<(String, String)>,
    /// Inputs fed to the engine.
    pub replayed: u64,
    /// Of those, inputs accepted under another bundle than the one replayed.
    pub other_bundle: u64,
    /// Inputs the bundle refuses (a device or variable that is no longer there): not fed.
    pub skipped: Vec<Skipped>,
    /// The last journaled input's sequence number.
    pub last_seq: Option<u64>,
}

/// A journaled input that replay did not feed to the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub seq: u64,
    pub t_ms: u64,
    pub bundle_sha256: String,
    pub errors: Vec<InputError>,
}

/// The kind and the device of an input, as plain columns for people querying the journal.
fn columns(i: &Input) -> (&'static str, Option<&str>) {
    match i {
        Input::Reading { device, .. } => ("reading", Some(device)),
        Input::Alert { device, .. } => ("alert", Some(device)),
        Input::Operator { device, .. } => ("operator", Some(device)),
        Input::Tick => ("tick", None),
    }
}

/// A journaled input in words: `temp=31, door=open`, `port_scan from sniffer`,
/// `reset by console:1a2b3c4d`.
fn input_text(json: &str, who: &str) -> String {
    match serde_json::from_str::<Input>(json) {
        Ok(Input::Reading { values, .. }) => values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
        Ok(Input::Alert { alert, source, .. }) => match source {
            Some(s) => format!("{alert} from {s}"),
            None => alert,
        },
        Ok(Input::Operator { action, .. }) if who.is_empty() => action,
        Ok(Input::Operator { action, .. }) => format!("{action} by {who}"),
        Ok(Input::Tick) => "timers".to_string(),
        Err(e) => format!("unreadable input: {e}"),
    }
}

fn to_sql(what: &'static str, value: u64) -> Result<i64, JournalError> {
    i64::try_from(value).map_err(|_| JournalError::OutOfRange { what, value })
}

fn from_sql(seq: i64, what: &str, value: i64) -> Result<u64, JournalError> {
    u64::try_from(value).map_err(|_| JournalError::Corrupt {
        seq,
        message: format!("negative {what} {value}"),
    })
}

/// The journal, open. Owned by the one task that journals (the main loop): a connection
/// is not shared between threads.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
}

impl Journal {
    /// Opens the journal at `path`, creating it and its schema if the file does not exist.
    /// Write-ahead logging with `synchronous = FULL`: when a write returns, it is on disk
    /// and survives a crash of the process or of the machine.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // `journal_mode` answers with the mode in force: a file system that cannot do WAL
        // keeps the rollback journal, which is as durable, so the answer is not checked.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(open_err)?;
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(open_err)?;
        let tx = conn.transaction().map_err(open_err)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        match version {
            0 => {
                // A new file (or one that is no journal: then a table exists and the
                // schema's `CREATE TABLE` fails rather than mixing in).
                tx.execute_batch(SCHEMA).map_err(open_err)?;
                tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                    .map_err(open_err)?;
            }
            SCHEMA_VERSION => {}
            found => {
                return Err(JournalError::Version {
                    path: path.to_path_buf(),
                    found,
                })
            }
        }
        tx.execute_batch(ACTORS).map_err(open_err)?;
        tx.execute_batch(CLOCK).map_err(open_err)?;
        tx.commit().map_err(open_err)?;
        Ok(Journal { conn })
    }

    /// The engine's epoch, once recorded.
    pub fn epoch(&self) -> Result<Option<Epoch>, JournalError> {
        let row: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT start_ms, day_offset_ms FROM epoch WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(s, d)| {
            Ok(Epoch {
                start_ms: from_sql(0, "start time", s)?,
                day_offset_ms: from_sql(0, "day offset", d)?,
            })
        })
        .transpose()
    }

    /// Journals an input accepted at `t_ms` under the bundle whose manifest has sha256
    /// `bundle_sha256`, and returns its sequence number. Durable when it returns:
    /// acknowledge the input to its sender only then.
    pub fn append_input(
        &self,
        t_ms: u64,
        bundle_sha256: &str,
        input: &Input,
    ) -> Result<u64, JournalError> {
        let text = serde_json::to_string(input).map_err(|e| JournalError::Corrupt {
            seq: 0,
            message: e.to_string(),
        })?;
        let (kind, device) = columns(input);
        self.conn
            .prepare_cached(
                "INSERT INTO inputs (t_ms, bundle_sha256, kind, device, input) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![to_sql("time", t_ms)?, bundle_sha256, kind, device, text])?;
        let seq = self.conn.last_insert_rowid();
        from_sql(seq, "sequence number", seq)
    }

    /// Journals several inputs accepted at `t_ms`, in order, in one transaction: one sync
    /// to disk for all of them (a group commit), all or none. Durable when it returns;
    /// their sequence numbers, in order.
    pub fn append_inputs<'a>(
        &self,
        t_ms: u64,
        bundle_sha256: &str,
        inputs: impl IntoIterator<Item = &'a Input>,
    ) -> Result<Vec<u64>, JournalError> {
        self.append_inputs_by(t_ms, bundle_sha256, inputs.into_iter().map(|i| (i, None)))
    }

    /// As [`Journal::append_inputs`], with who gave each input where it is known (the
    /// `actors` table), in the same transaction.
    pub fn append_inputs_by<'a>(
        &self,
        t_ms: u64,
        bundle_sha256: &str,
        inputs: impl IntoIterator<Item = (&'a Input, Option<&'a str>)>,
    ) -> Result<Vec<u64>, JournalError> {
        let tx = self.conn.unchecked_transaction()?;
        let mut seqs = Vec::new();
        for (input, who) in inputs {
            let seq = self.append_input(t_ms, bundle_sha256, input)?;
            if let Some(who) = who {
                self.conn
                    .prepare_cached("INSERT INTO actors (seq, who) VALUES (?1, ?2)")?
                    .execute(params![to_sql("sequence number", seq)?, who])?;
            }
            seqs.push(seq);
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// The last `limit` things journaled about `device`, newest first: its inputs
    /// (readings, alerts, operator actions with who gave them), state changes, fail-closed
    /// postures and commands.
    pub fn history(&self, device: &str, limit: usize) -> Result<Vec<HistoryEntry>, JournalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(
            "SELECT t_ms, kind, a, b, c, d FROM (
                 SELECT i.t_ms, i.kind, i.seq AS k, i.input AS a, x.who AS b, NULL AS c, NULL AS d
                   FROM inputs i LEFT JOIN actors x ON x.seq = i.seq WHERE i.device = ?1
                 UNION ALL
                 SELECT t_ms, 'change', id, from_state, to_state, cause, NULL
                   FROM changes WHERE device = ?1
                 UNION ALL
                 SELECT t_ms, 'fail_closed', id, state_installed, reason, NULL, NULL
                   FROM fail_closed WHERE device = ?1
                 UNION ALL
                 SELECT t_ms, 'command', id, command, rule, status, error
                   FROM commands WHERE device = ?1
             ) ORDER BY t_ms DESC,
               -- At one time, what an input caused comes before it (newest first).
               CASE WHEN kind IN ('change', 'fail_closed', 'command') THEN 0 ELSE 1 END,
               k DESC
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![device, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (t, kind, a, b, c, d) = row?;
            let (a, b, c) = (
                a.unwrap_or_default(),
                b.unwrap_or_default(),
                c.unwrap_or_default(),
            );
            let text = match kind.as_str() {
                "change" => format!("{a} -> {b}: {c}"),
                "fail_closed" => format!("failed closed (installed {a}): {b}"),
                "command" => match d {
                    Some(e) => format!("command {a} (rule {b}): {c}: {e}"),
                    None => format!("command {a} (rule {b}): {c}"),
                },
                _ => input_text(&a, &b),
            };
            out.push(HistoryEntry {
                t_ms: from_sql(0, "time", t)?,
                kind,
                text,
            });
        }
        Ok(out)
    }

    /// Every journaled input, in the order it was accepted.
    pub fn inputs(&self) -> Result<Vec<JournaledInput>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, t_ms, bundle_sha256, input FROM inputs ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, t, sha, text) = row?;
            let input: Input = serde_json::from_str(&text).map_err(|e| JournalError::Corrupt {
                seq,
                message: e.to_string(),
            })?;
            out.push(JournaledInput {
                seq: from_sql(seq, "sequence number", seq)?,
                t_ms: from_sql(seq, "time", t)?,
                bundle_sha256: sha,
                input,
            });
        }
        Ok(out)
    }

    /// Opens a transaction for the records that follow (state changes, failures,
    /// commands): one sync to disk for all of them at [`Journal::commit`]. Inputs are
    /// never journaled inside one ([`Journal::append_inputs`] makes its own): an input is
    /// on disk before anything it causes.
    pub fn begin(&self) -> Result<(), JournalError> {
        if self.conn.is_autocommit() {
            self.conn.execute_batch("BEGIN")?;
        }
        Ok(())
    }

    /// Commits what [`Journal::begin`] opened (nothing if none is open).
    pub fn commit(&self) -> Result<(), JournalError> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// Makes what is recorded so far durable, keeping a transaction open if one was: a
    /// command is on disk before it is sent.
    pub fn checkpoint(&self) -> Result<(), JournalError> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT; BEGIN")?;
        }
        Ok(())
    }

    /// Records a device's state change and its cause (in words: see
    /// [`crate::simulate::cause_text`]).
    pub fn record_change(
        &self,
        t_ms: u64,
        device: &str,
        from: &str,
        to: &str,
        cause: &str,
    ) -> Result<(), JournalError> {
        self.conn.execute(
            "INSERT INTO changes (after_seq, t_ms, device, from_state, to_state, cause)
             VALUES ((SELECT MAX(seq) FROM inputs), ?1, ?2, ?3, ?4, ?5)",
            params![to_sql("time", t_ms)?, device, from, to, cause],
        )?;
        Ok(())
    }

    /// Records that a device's posture failed and `state_installed`'s flows (its most
    /// restrictive state) were installed instead.
    pub fn record_fail_closed(
        &self,
        t_ms: u64,
        device: &str,
        state_installed: &str,
        reason: &str,
    ) -> Result<(), JournalError> {
        self.conn.execute(
            "INSERT INTO fail_closed (after_seq, t_ms, device, state_installed, reason)
             VALUES ((SELECT MAX(seq) FROM inputs), ?1, ?2, ?3, ?4)",
            params![to_sql("time", t_ms)?, device, state_installed, reason],
        )?;
        Ok(())
    }

    /// Records a command a rule sends to a device, pending, and returns its id for
    /// [`Journal::update_command`]. Record it before sending it: a crash in between
    /// leaves it pending, visible in [`Journal::pending_commands`].
    pub fn record_command(
        &self,
        t_ms: u64,
        device: &str,
        command: &str,
        rule: &str,
    ) -> Result<u64, JournalError> {
        self.conn.execute(
            "INSERT INTO commands (after_seq, t_ms, device, command, rule)
             VALUES ((SELECT MAX(seq) FROM inputs), ?1, ?2, ?3, ?4)",
            params![to_sql("time", t_ms)?, device, command, rule],
        )?;
        let id = self.conn.last_insert_rowid();
        from_sql(id, "command id", id)
    }

    /// Records how a command's delivery ended.
    pub fn update_command(&self, id: u64, delivery: &Delivery) -> Result<(), JournalError> {
        let (status, attempts, error) = match delivery {
            Delivery::Delivered => ("delivered", None, None),
            Delivery::Failed { attempts, error } => {
                ("failed", Some(i64::from(*attempts)), Some(error.as_str()))
            }
        };
        let n = self.conn.execute(
            "UPDATE commands SET status = ?2, attempts = COALESCE(?3, attempts), error = ?4
             WHERE id = ?1",
            params![to_sql("command id", id)?, status, attempts, error],
        )?;
        if n == 0 {
            return Err(JournalError::NoSuchCommand { id });
        }
        Ok(())
    }

    /// A journaled command.
    pub fn command(&self, id: u64) -> Result<Option<CommandRecord>, JournalError> {
        self.commands_where("id = ?1", &[to_sql("command id", id)?])
            .map(|mut v| v.pop())
    }

    /// Commands recorded but neither delivered nor failed (the shim stopped while sending
    /// them), oldest first.
    pub fn pending_commands(&self) -> Result<Vec<CommandRecord>, JournalError> {
        self.commands_where("status = 'pending'", &[])
    }

    fn commands_where(&self, cond: &str, args: &[i64]) -> Result<Vec<CommandRecord>, JournalError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, t_ms, device, command, rule, status, attempts, error
             FROM commands WHERE {cond} ORDER BY id"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, t, device, command, rule, status, attempts, error) = row?;
            let delivery = match status.as_str() {
                "pending" => None,
                "delivered" => Some(Delivery::Delivered),
                _ => Some(Delivery::Failed {
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    error: error.unwrap_or_default(),
                }),
            };
            out.push(CommandRecord {
                id: from_sql(id, "command id", id)?,
                t_ms: from_sql(id, "time", t)?,
                device,
                command,
                rule,
                delivery,
            });
        }
        Ok(out)
    }

    /// Every device's latest journaled state change, by device name.
    pub fn last_changes(&self) -> Result<BTreeMap<String, Change>, JournalError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, device, t_ms, from_state, to_state, cause FROM changes
             WHERE id IN (SELECT MAX(id) FROM changes GROUP BY device)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (id, device, t, from, to, cause) = row?;
            let t_ms = from_sql(id, "time", t)?;
            out.insert(
                device,
                Change {
                    t_ms,
                    from,
                    to,
                    cause,
                },
            );
        }
        Ok(out)
    }

    /// Every device's latest journaled fail-closed posture, by device name. It is still
    /// in force if it is later than the device's last state change.
    pub fn last_fail_closed(&self) -> Result<BTreeMap<String, FailClosed>, JournalError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, device, t_ms, state_installed, reason FROM fail_closed
             WHERE id IN (SELECT MAX(id) FROM fail_closed GROUP BY device)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (id, device, t, state_installed, reason) = row?;
            let t_ms = from_sql(id, "time", t)?;
            out.insert(
                device,
                FailClosed {
                    t_ms,
                    state_installed,
                    reason,
                },
            );
        }
        Ok(out)
    }

    /// A fresh engine for `bundle`, fed every journaled input in order; effects are
    /// returned nowhere and executed by no one. The engine starts at the journaled epoch;
    /// a journal without one (a new journal) gets `start_ms = now_ms` and `config`'s day
    /// offset recorded as its epoch first.
    ///
    /// An input the bundle refuses (after an upgrade, a device or variable that is gone)
    /// is skipped and listed in the report, never dropped silently.
    pub fn replay(
        &self,
        bundle: &Bundle,
        config: Config,
        now_ms: u64,
    ) -> Result<(Engine, ReplayReport), JournalError> {
        let inputs = self.inputs()?;
        let epoch = match self.epoch()? {
            Some(e) => e,
            None => {
                // Older inputs than the epoch cannot be, but a journal edited by hand
                // must still replay: start no later than its first input.
                let start_ms = inputs.first().map_or(now_ms, |i| i.t_ms.min(now_ms));
                let e = Epoch {
                    start_ms,
                    day_offset_ms: config.day_offset_ms,
                };
                self.conn.execute(
                    "INSERT INTO epoch (id, start_ms, day_offset_ms) VALUES (1, ?1, ?2)",
                    params![
                        to_sql("time", e.start_ms)?,
                        to_sql("day offset", e.day_offset_ms)?
                    ],
                )?;
                e
            }
        };
        let clock = clock_name(&config);
        let journaled: Option<String> = self
            .conn
            .query_row("SELECT name FROM clock WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        let clock_changed = match journaled {
            Some(old) => (old != clock).then(|| (old, clock.clone())),
            // A journal from before the clock was journaled: only its epoch's fixed
            // offset can tell (a zone's offset changes by itself).
            None => (epoch.day_offset_ms != config.day_offset_ms && config.zone.is_none())
                .then(|| (fixed_offset_name(epoch.day_offset_ms), clock.clone())),
        };
        self.conn.execute(
            "INSERT INTO clock (id, name) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name",
            params![clock],
        )?;
        let mut engine = Engine::new(bundle, config, epoch.start_ms);
        let mut report = ReplayReport {
            epoch: Some(epoch),
            clock_changed,
            last_seq: inputs.last().map(|i| i.seq),
            ..ReplayReport::default()
        };
        for i in inputs {
            match engine.handle(i.t_ms, &i.input) {
                Ok(_) => {
                    report.replayed += 1;
                    if i.bundle_sha256 != bundle.manifest_sha256 {
                        report.other_bundle += 1;
                    }
                }
                Err(errors) => report.skipped.push(Skipped {
                    seq: i.seq,
                    t_ms: i.t_ms,
                    bundle_sha256: i.bundle_sha256,
                    errors,
                }),
            }
        }
        Ok((engine, report))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The journal stores inputs in the engine's serde form: this pins it, so that a change
    /// of `Input` that would change what is on disk (and leave older journals unreadable)
    /// fails here.
    #[test]
    fn inputs_keep_their_format_on_disk() {
        let cases = [
            (
                Input::Reading {
                    device: "d".into(),
                    values: [("x".to_string(), serde_json::json!(3))]
                        .into_iter()
                        .collect(),
                },
                r#"{"kind":"reading","device":"d","values":{"x":3}}"#,
            ),
            (
                Input::Alert {
                    device: "d".into(),
                    alert: "scan".into(),
                    source: Some("ids".into()),
                },
                r#"{"kind":"alert","device":"d","alert":"scan","source":"ids"}"#,
            ),
            (
                Input::Alert {
                    device: "d".into(),
                    alert: "tamper".into(),
                    source: None,
                },
                r#"{"kind":"alert","device":"d","alert":"tamper"}"#,
            ),
            (
                Input::Operator {
                    device: "d".into(),
                    action: "reset".into(),
                },
                r#"{"kind":"operator","device":"d","action":"reset"}"#,
            ),
            (Input::Tick, r#"{"kind":"tick"}"#),
        ];
        for (input, text) in cases {
            assert_eq!(serde_json::to_string(&input).unwrap(), text);
            assert_eq!(serde_json::from_str::<Input>(text).unwrap(), input);
        }
        let extra = r#"{"kind":"operator","device":"d","action":"reset","extra":1}"#;
        assert!(serde_json::from_str::<Input>(extra).is_err());
    }
}
