//! A site's keys in etcd (`docs/scale-out.md`, "The key space"): the connection over
//! mutual TLS, the keys' names, and the values the controller and the agents write, each
//! as JSON. Every call has a deadline; nothing here decides anything.

use crate::enforcement::{CrossingCell, Enforcement};
use crate::engine::Input;
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, KeyValue, TlsOptions,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where etcd is and how this process proves who it is. The files are read at
/// [`Store::connect`]; nothing secret is given on a command line.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `https://HOST:PORT` of one or more members.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates (PEM).
    pub ca: PathBuf,
    /// This process's client certificate and its key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Every call's deadline (a transaction, a read, a lease grant).
    pub timeout: Duration,
}

/// The default of [`EtcdConfig::timeout`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("`{key}` holds a value this shim does not read: {detail}")]
    Corrupt { key: String, detail: String },
}

/// One site's keys, under `/kalki/v1/SITE/`.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    timeout: Duration,
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Store {
    /// Connects to etcd with the client certificate of `cfg` (mutual TLS).
    pub async fn connect(cfg: &EtcdConfig, site: &str) -> Result<Store, StoreError> {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&cfg.ca)?))
            .identity(Identity::from_pem(read(&cfg.cert)?, read(&cfg.key)?));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(cfg.timeout)
            .with_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(2), cfg.timeout)
            .with_keep_alive_while_idle(true)
            // A member that lost its quorum answers at once rather than hang.
            .with_require_leader(true);
        let client = tokio::time::timeout(
            cfg.timeout,
            Client::connect(cfg.endpoints.clone(), Some(options)),
        )
        .await
        .map_err(|_| StoreError::Timeout(cfg.timeout))??;
        Ok(Store {
            client,
            prefix: format!("/kalki/v1/{site}/"),
            timeout: cfg.timeout,
        })
    }

    /// A client to call with (cheap: one connection is shared).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The full name of the site's key `rest` (`inputs/00000000000000000001`).
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// `rest` of a full key name of this site, if it is one.
    pub fn rest<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)
    }

    /// Runs one call under the deadline.
    pub async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }

    /// A call tried again while it fails, for up to the call deadline: a member that is
    /// down refuses the connection at once, and the client may pick it again. Only for
    /// calls that may be made twice: reads, puts of a value, watches, lease grants (a
    /// lease granted twice expires unused).
    pub async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = std::time::Instant::now();
        loop {
            match self.call(f(self.client())).await {
                Ok(r) => return Ok(r),
                Err(e) if started.elapsed() >= self.timeout => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A read (`get` with `options`), tried again ([`Store::retry`]).
    pub async fn read(
        &self,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, StoreError> {
        self.retry(|mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    /// Every key under `prefix` (a full key name) and the revision they were read at,
    /// in pages of [`PAGE_KEYS`] keys read at that one revision: one answer holding them
    /// all would pass gRPC's 4 MiB limit on a large site (100,000 reports of about 600
    /// bytes). Each page is tried again ([`Store::read`]).
    pub async fn read_all(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut all = Vec::new();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_KEYS);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = self
                .retry(|mut c| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { c.get(from, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            if let Some(last) = page.kvs().last() {
                from = last.key().to_vec();
                from.push(0);
            }
            all.extend_from_slice(page.kvs());
            if !more || page.kvs().is_empty() {
                return Ok((all, revision));
            }
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Keys per page of [`Store::read_all`].
pub const PAGE_KEYS: i64 = 1000;

/// The first key after every key that starts with `prefix` (etcd's range end of a
/// prefix): its last byte that is not 0xff, plus one, and nothing after it.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

/// The key of input `seq`: fixed width, so that keys sort as numbers.
pub fn input_key(seq: u64) -> String {
    format!("inputs/{seq:020}")
}

/// The sequence number of an input's key (`inputs/...`).
pub fn input_seq(rest: &str) -> Option<u64> {
    rest.strip_prefix("inputs/")?.parse().ok()
}

pub fn posture_key(node: &str, device: &str) -> String {
    format!("postures/{node}/{device}")
}

pub fn status_key(node: &str, device: &str) -> String {
    format!("status/{node}/{device}")
}

pub fn agent_key(node: &str) -> String {
    format!("agents/{node}")
}

/// `inbox/NODE/ID`: an alert of a µmbox of `node`, waiting for the leader. `id` sorts
/// in the order the agent raised them (its clock, then a counter).
pub fn inbox_key(node: &str, id: &str) -> String {
    format!("inbox/{node}/{id}")
}

/// The node of an inbox key's rest (`inbox/NODE/ID`).
pub fn inbox_node(rest: &str) -> Option<&str> {
    let (node, id) = rest.strip_prefix("inbox/")?.split_once('/')?;
    (!node.is_empty() && !id.is_empty() && !id.contains('/')).then_some(node)
}

pub const LEADER: &str = "leader";
pub const EPOCH: &str = "epoch";

/// A value of ours, decoded, or why not.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        detail: e.to_string(),
    })
}

pub fn encode<T: Serialize>(value: &T) -> String {
    // Our own types, with string keys: serialising them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// `inputs/SEQ`: one input the leader accepted, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggedInput {
    pub t_ms: u64,
    /// The manifest of the bundle it was accepted under.
    pub bundle_sha256: String,
    /// Who gave an operator input (`api`, `console:ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub input: Input,
}

/// `postures/NODE/DEVICE`: the state the controller decided for the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredPosture {
    pub state: String,
    /// The input that decided it (0: none yet, the initial state).
    pub seq: u64,
    pub bundle_sha256: String,
}

/// `leader`: who leads, on its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderValue {
    pub id: String,
    /// Where its API listens (as given to `--listen`).
    pub api: String,
    pub bundle_sha256: String,
}

/// `epoch`: the engine's start and clock, written once by the first leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochValue {
    pub start_ms: u64,
    pub day_offset_ms: u64,
}

/// `agents/NODE`: an agent is alive, on its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentValue {
    pub id: String,
    /// The manifest of the node's part of the bundle it runs.
    pub bundle_sha256: String,
    pub started_ms: u64,
}

/// `status/NODE/DEVICE`: what the node's agent saw of the device at its last look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedStatus {
    /// The state whose posture the agent was bringing the device to.
    pub state: String,
    pub enforcement: Enforcement,
    /// The µmboxes of that posture found running.
    pub umboxes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crosses: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossing: Option<Vec<CrossingCell>>,
    /// When it looked (Unix milliseconds, the agent's clock).
    pub t_ms: u64,
}

/// `inbox/NODE/ID`: an alert a µmbox of the node raised, as the agent saw it. The
/// leader moves it into the log (as the input `run` would make of it) in the same
/// transaction that deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxAlert {
    /// The device the µmbox serves.
    pub device: String,
    pub alert: String,
    /// The µmbox's catalog name (`kalki.umbox`): the engine's `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umbox: Option<String>,
    /// The container and its id (which instance said it).
    pub container: String,
    pub container_id: String,
    /// The agent that saw it, and when (the agent's clock).
    pub agent: String,
    pub t_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_keys_sort_as_their_numbers() {
        let mut keys: Vec<String> = [10, 9, 1_000_000, 2].into_iter().map(input_key).collect();
        keys.sort();
        let seqs: Vec<u64> = keys.iter().filter_map(|k| input_seq(k)).collect();
        assert_eq!(seqs, [2, 9, 10, 1_000_000]);
        assert_eq!(input_seq("inputs/x"), None);
        assert_eq!(input_seq("postures/a/b"), None);
    }

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end("/kalki/v1/s/status/"), b"/kalki/v1/s/status0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
        assert_eq!(prefix_end(""), [0]);
        let end = prefix_end("/kalki/v1/s/status/");
        for key in [
            "/kalki/v1/s/status/",
            "/kalki/v1/s/status/n1/d",
            "/kalki/v1/s/status/\u{10ffff}",
        ] {
            assert!(key.as_bytes() < end.as_slice(), "{key}");
        }
        assert!(b"/kalki/v1/s/status0".as_slice() >= end.as_slice());
    }

    #[test]
    fn an_inbox_key_names_its_node() {
        let rest = inbox_key("east", "0001733300000000-00000001");
        assert_eq!(inbox_node(&rest), Some("east"));
        assert_eq!(inbox_node("inbox/east/"), None);
        assert_eq!(inbox_node("inbox//x"), None);
        assert_eq!(inbox_node("inbox/east/a/b"), None);
        assert_eq!(inbox_node("status/east/door"), None);
    }
}
