//! A persistent OpenFlow 1.5 connection to one Open vSwitch bridge's management socket
//! (`unix:/var/run/openvswitch/<bridge>.mgmt`): the I/O edge of the crate.
//!
//! One [`Client`] owns one connection and does one thing at a time (`&mut self`). A
//! device's posture change is [`Client::swap`]: one atomic, ordered bundle that deletes
//! the device's flows by cookie and mask and adds the new set, committed only once the
//! switch has accepted every message (a barrier follows the bundled messages, as
//! `ovs-ofctl --bundle` does). Every wait is bounded by the client's timeout. After a
//! timeout, a closed socket or a protocol error the connection is dropped, later calls
//! return [`Error::Disconnected`], and the caller decides when to [`Client::reconnect`].
//! [`Client::dump`] reads flows back by cookie (multipart `OFPMP_FLOW_DESC`), so the
//! installed state can be learnt from the switch.
//!
//! Open vSwitch probes an idle management connection with an ECHO_REQUEST after 60 s and
//! closes it 60 s later if nothing came back (measured on 3.1). The client answers
//! echoes whenever it reads; a caller that may stay idle longer should call
//! [`Client::echo`] every 30 s or so, or reconnect on [`Error::Disconnected`].

use crate::flow::FlowMod;
use crate::wire::{
    self, BundleCtrl, Header, OfError, Reply, Request, WireError, HEADER_LEN, OFPBF_ATOMIC,
    OFPBF_ORDERED,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

/// The management socket Open vSwitch opens for `bridge`.
pub fn mgmt_socket(bridge: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/openvswitch/{bridge}.mgmt"))
}

/// What went wrong talking to the switch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to `{}`: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The peer does not speak OpenFlow 1.5 (for Open vSwitch: the bridge's `protocols`
    /// column lacks `OpenFlow15`).
    #[error("the switch does not speak OpenFlow 1.5 (its HELLO: version {version:#04x}, bitmap {bitmap:?})")]
    Incompatible { version: u8, bitmap: Option<u32> },
    /// No connection: it was never made, it broke, or an earlier error dropped it.
    /// Call [`Client::reconnect`].
    #[error("not connected to the switch: {reason}")]
    Disconnected { reason: String },
    /// The switch did not answer in time; the connection was dropped. If this happened
    /// while waiting for a commit, the bundle may or may not have been applied.
    #[error("no answer from the switch within {after:?} while waiting for {waiting_for}; the connection was dropped")]
    Timeout {
        waiting_for: &'static str,
        after: Duration,
    },
    /// The switch refused a message. For a bundle, nothing was changed: the switch
    /// discarded it (atomic bundle).
    #[error("the switch rejected {what}: {error}{}", if *.discarded { "; the bundle was discarded, nothing changed" } else { "" })]
    Rejected {
        what: Rejected,
        error: OfError,
        /// True for bundles: the switch applied none of it.
        discarded: bool,
    },
    /// A flow given to [`Client::swap`] has a cookie the swap's mask does not select:
    /// the next swap's delete would not remove it. Nothing was sent.
    #[error("flow {index} (`{flow}`) has a cookie outside {cookie:#x}/{cookie_mask:#x}: a later swap would not remove it; nothing was sent")]
    CookieOutsideMask {
        index: usize,
        flow: String,
        cookie: u64,
        cookie_mask: u64,
    },
    /// A dumped flow holds something a rule set cannot say (a foreign flow under the
    /// cookie asked for). The connection stays usable.
    #[error("the switch holds a flow this client cannot represent: {0}")]
    Unrepresentable(WireError),
    /// The switch sent something this client cannot read; the connection was dropped.
    #[error("protocol error: {0}; the connection was dropped")]
    Protocol(String),
}

impl Error {
    /// Whether the connection is gone and [`Client::reconnect`] is needed.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            Error::Disconnected { .. }
                | Error::Timeout { .. }
                | Error::Protocol(_)
                | Error::Connect { .. }
                | Error::Incompatible { .. }
        )
    }
}

/// Which message of a request the switch refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Opening the bundle.
    Open,
    /// The delete by cookie and mask.
    Delete { cookie: u64, cookie_mask: u64 },
    /// Flow `index` of the slice given (0-based), shown in rule-set syntax.
    Flow { index: usize, flow: String },
    /// The commit, without naming a message.
    Commit,
    /// A lone message (barrier, echo).
    Request(&'static str),
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Open => f.write_str("the bundle open"),
            Rejected::Delete {
                cookie,
                cookie_mask,
            } => write!(f, "the delete of cookie={cookie:#x}/{cookie_mask:#x}"),
            Rejected::Flow { index, flow } => write!(f, "flow {index} (`{flow}`)"),
            Rejected::Commit => f.write_str("the bundle commit"),
            Rejected::Request(what) => write!(f, "the {what}"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Conn {
    stream: UnixStream,
    /// Bytes read and not yet framed.
    buf: Vec<u8>,
}

/// A persistent OpenFlow 1.5 connection to one bridge.
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    conn: Option<Conn>,
    /// Why `conn` is `None`.
    lost: String,
    next_xid: u32,
    next_bundle: u32,
}

/// What one bundled message stands for, to name it in an error.
/// One set of a bundle: the delete by `(cookie, cookie_mask)` if any, then the adds.
type Group<'a> = (Option<(u64, u64)>, &'a [FlowMod]);

#[derive(Clone, Copy)]
enum Op {
    /// The delete of the set at this index.
    Delete(usize),
    /// A flow: the set's index, the flow's index in it.
    Flow(usize, usize),
}

impl Client {
    /// Connects to `path` (see [`mgmt_socket`]) and exchanges HELLOs; fails unless both
    /// sides speak OpenFlow 1.5. `timeout` bounds this and every later wait.
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Client> {
        let mut client = Client {
            path: path.as_ref().to_path_buf(),
            timeout,
            conn: None,
            lost: "not connected yet".into(),
            next_xid: 1,
            next_bundle: 1,
        };
        client.reconnect().await?;
        Ok(client)
    }

    /// Drops the current connection, if any (an open bundle on it is discarded by the
    /// switch), and connects again.
    pub async fn reconnect(&mut self) -> Result<()> {
        self.conn = None;
        let deadline = Instant::now() + self.timeout;
        let stream = match timeout_at(deadline, UnixStream::connect(&self.path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                self.lost = format!("cannot connect: {source}");
                return Err(Error::Connect {
                    path: self.path.clone(),
                    source,
                });
            }
            Err(_) => return Err(self.timed_out("the connection")),
        };
        self.conn = Some(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        });
        let xid = self.xid();
        self.send(&[Request::Hello], xid, deadline, "the HELLO")
            .await?;
        let (h, reply) = self.recv(deadline, "the switch's HELLO").await?;
        match reply {
            Reply::Hello { version, bitmap } if wire::negotiates_1_5(version, bitmap) => Ok(()),
            Reply::Hello { version, bitmap } => {
                Err(self.drop_conn(Error::Incompatible { version, bitmap }))
            }
            // HELLO_FAILED: the switch refuses every version offered.
            Reply::Error(e) if e.err_type == 0 => Err(self.drop_conn(Error::Incompatible {
                version: h.version,
                bitmap: None,
            })),
            _ => Err(self.drop_conn(Error::Protocol(
                "the switch's first message was not a HELLO".into(),
            ))),
        }
    }

    /// Whether the client holds a connection (it may still turn out broken on use).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The socket this client connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces every flow whose cookie matches `cookie` under `cookie_mask` (in all
    /// tables) by `flows`, atomically: one ordered bundle of the delete and the adds.
    /// Either all of it is applied or, if the switch refuses any message, none of it
    /// ([`Error::Rejected`] names the message). Swapping to the same set again is
    /// harmless, so after a [`Error::Timeout`] or [`Error::Disconnected`] (when the
    /// outcome of a commit is unknown) reconnect and swap again.
    pub async fn swap(&mut self, cookie: u64, cookie_mask: u64, flows: &[FlowMod]) -> Result<()> {
        self.swap_many(&[(cookie, cookie_mask, flows)]).await
    }

    /// [`Client::swap`] of several sets (each `(cookie, cookie_mask, flows)`) in one
    /// atomic bundle: every delete and add of every set, in order, or none. Several
    /// devices' posture changes cost the switch one commit.
    pub async fn swap_many(&mut self, sets: &[(u64, u64, &[FlowMod])]) -> Result<()> {
        for &(cookie, cookie_mask, flows) in sets {
            if let Some((index, f)) = flows
                .iter()
                .enumerate()
                .find(|(_, f)| f.cookie & cookie_mask != cookie & cookie_mask)
            {
                return Err(Error::CookieOutsideMask {
                    index,
                    flow: f.to_string(),
                    cookie,
                    cookie_mask,
                });
            }
        }
        let groups: Vec<Group<'_>> = sets
            .iter()
            .map(|&(cookie, mask, flows)| (Some((cookie, mask)), flows))
            .collect();
        self.bundle(&groups).await
    }

    /// Every flow, in every table, whose cookie matches `cookie` under `cookie_mask`, as
    /// the switch holds it (in the switch's order): the installed state can be read
    /// back by cookie, and compared with a rule set.
    pub async fn dump(&mut self, cookie: u64, cookie_mask: u64) -> Result<Vec<FlowMod>> {
        let deadline = Instant::now() + self.timeout;
        let xid = self.xid();
        let req = Request::FlowDump {
            cookie,
            cookie_mask,
        };
        self.send(&[req], xid, deadline, "a flow dump").await?;
        let mut flows = Vec::new();
        let mut unrepresentable = None;
        loop {
            let (h, reply) = self.recv(deadline, "the flow dump").await?;
            match reply {
                Reply::FlowDump { more, flows: part } if h.xid == xid => {
                    for f in part {
                        match f {
                            Ok(f) => flows.push(f),
                            Err(e) => unrepresentable = unrepresentable.or(Some(e)),
                        }
                    }
                    if !more {
                        break;
                    }
                }
                Reply::Error(error) if h.xid == xid => {
                    return Err(Error::Rejected {
                        what: Rejected::Request("flow dump"),
                        error,
                        discarded: false,
                    })
                }
                _ => {}
            }
        }
        match unrepresentable {
            Some(e) => Err(Error::Unrepresentable(e)),
            None => Ok(flows),
        }
    }

    /// Adds `flows` in one atomic bundle (all or nothing). An added flow with the same
    /// table, priority and match as an existing one replaces it.
    pub async fn add(&mut self, flows: &[FlowMod]) -> Result<()> {
        self.bundle(&[(None, flows)]).await
    }

    /// Waits until the switch has processed everything sent before.
    pub async fn barrier(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let xid = self.xid();
        self.send(&[Request::Barrier], xid, deadline, "a barrier")
            .await?;
        loop {
            let (h, reply) = self.recv(deadline, "the barrier reply").await?;
            match reply {
                Reply::BarrierReply if h.xid == xid => return Ok(()),
                Reply::Error(error) if h.xid == xid => {
                    return Err(Error::Rejected {
                        what: Rejected::Request("barrier"),
                        error,
                        discarded: false,
                    })
                }
                _ => {}
            }
        }
    }

    /// Sends an ECHO_REQUEST and waits for its reply: a liveness check and a keepalive.
    /// Returns the round-trip time.
    pub async fn echo(&mut self) -> Result<Duration> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let xid = self.xid();
        let payload = xid.to_be_bytes();
        self.send(&[Request::EchoRequest(&payload)], xid, deadline, "an echo")
            .await?;
        loop {
            let (h, reply) = self.recv(deadline, "the echo reply").await?;
            match reply {
                Reply::EchoReply(_) if h.xid == xid => return Ok(start.elapsed()),
                Reply::Error(error) if h.xid == xid => {
                    return Err(Error::Rejected {
                        what: Rejected::Request("echo"),
                        error,
                        discarded: false,
                    })
                }
                _ => {}
            }
        }
    }

    fn xid(&mut self) -> u32 {
        let x = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        x
    }

    /// One atomic, ordered bundle: OPEN, the delete (if any) and the adds, then a
    /// BARRIER; COMMIT only if nothing was refused, else DISCARD.
    async fn bundle(&mut self, groups: &[Group<'_>]) -> Result<()> {
        if self.conn.is_none() {
            return Err(self.disconnected());
        }
        let bundle_id = self.next_bundle;
        self.next_bundle = self.next_bundle.wrapping_add(1);
        let flags = OFPBF_ATOMIC | OFPBF_ORDERED;
        let deadline = Instant::now() + self.timeout;

        // Everything up to the barrier goes out in one write.
        let count: usize = groups.iter().map(|(_, f)| f.len() + 1).sum();
        let mut out = Vec::with_capacity(64 + count * 144);
        let mut ops: Vec<(u32, Op)> = Vec::with_capacity(count);
        let open_xid = self.xid();
        self.encode(
            &Request::BundleControl {
                bundle_id,
                kind: BundleCtrl::OpenRequest,
                flags,
            },
            open_xid,
            &mut out,
        )?;
        for (g, &(delete, flows)) in groups.iter().enumerate() {
            if let Some((cookie, cookie_mask)) = delete {
                let xid = self.xid();
                let del = Request::FlowDelete {
                    cookie,
                    cookie_mask,
                };
                self.encode(
                    &Request::BundleAdd {
                        bundle_id,
                        flags,
                        message: &del,
                    },
                    xid,
                    &mut out,
                )?;
                ops.push((xid, Op::Delete(g)));
            }
            for (i, f) in flows.iter().enumerate() {
                let xid = self.xid();
                let add = Request::FlowAdd(f);
                let msg = Request::BundleAdd {
                    bundle_id,
                    flags,
                    message: &add,
                };
                if let Err(e) = msg.encode_into(xid, &mut out) {
                    return Err(Error::Protocol(format!(
                        "flow {i} (`{f}`) cannot be sent: {e}"
                    )));
                }
                ops.push((xid, Op::Flow(g, i)));
            }
        }
        let barrier_xid = self.xid();
        self.encode(&Request::Barrier, barrier_xid, &mut out)?;
        self.write(&out, deadline, "the bundle").await?;

        let describe = |op: Op| match op {
            Op::Delete(g) => {
                let (cookie, cookie_mask) = groups.get(g).and_then(|(d, _)| *d).unwrap_or_default();
                Rejected::Delete {
                    cookie,
                    cookie_mask,
                }
            }
            Op::Flow(g, i) => Rejected::Flow {
                index: i,
                flow: groups
                    .get(g)
                    .and_then(|(_, flows)| flows.get(i))
                    .map(|f| f.to_string())
                    .unwrap_or_default(),
            },
        };
        // Only consulted when the switch refuses something.
        let find = |xid: u32| ops.iter().find(|(x, _)| *x == xid).map(|(_, op)| *op);

        // Until the barrier reply: the open reply and any refused message.
        let mut open_error: Option<OfError> = None;
        let mut refused: Option<(Op, OfError)> = None;
        loop {
            let (h, reply) = self.recv(deadline, "the bundle's barrier reply").await?;
            match reply {
                Reply::BarrierReply if h.xid == barrier_xid => break,
                Reply::Error(e) if h.xid == open_xid => open_error = open_error.or(Some(e)),
                Reply::Error(e) => {
                    if let Some(op) = find(h.xid) {
                        refused = refused.or(Some((op, e)));
                    }
                }
                _ => {}
            }
        }
        if let Some(error) = open_error {
            return Err(Error::Rejected {
                what: Rejected::Open,
                error,
                discarded: true,
            });
        }
        if let Some((op, error)) = refused {
            self.control(
                bundle_id,
                BundleCtrl::DiscardRequest,
                flags,
                "the discard reply",
            )
            .await?;
            return Err(Error::Rejected {
                what: describe(op),
                error,
                discarded: true,
            });
        }

        // Commit. A message that fails only now is reported with its own xid before the
        // commit's error.
        let deadline = Instant::now() + self.timeout;
        let commit_xid = self.xid();
        let commit = Request::BundleControl {
            bundle_id,
            kind: BundleCtrl::CommitRequest,
            flags,
        };
        self.send(&[commit], commit_xid, deadline, "the commit")
            .await?;
        loop {
            let (h, reply) = self.recv(deadline, "the commit reply").await?;
            match reply {
                Reply::BundleControl {
                    kind: BundleCtrl::CommitReply,
                    ..
                } if h.xid == commit_xid => return Ok(()),
                Reply::Error(error) if h.xid == commit_xid => {
                    let (what, error) = match refused {
                        Some((op, e)) => (describe(op), e),
                        None => (Rejected::Commit, error),
                    };
                    return Err(Error::Rejected {
                        what,
                        error,
                        discarded: true,
                    });
                }
                Reply::Error(e) => {
                    if let Some(op) = find(h.xid) {
                        refused = refused.or(Some((op, e)));
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends a bundle control request and waits for its reply (an error reply counts as
    /// an answer: after a refused message the switch may already have dropped the
    /// bundle).
    async fn control(
        &mut self,
        bundle_id: u32,
        kind: BundleCtrl,
        flags: u16,
        waiting_for: &'static str,
    ) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let xid = self.xid();
        let req = Request::BundleControl {
            bundle_id,
            kind,
            flags,
        };
        self.send(&[req], xid, deadline, waiting_for).await?;
        loop {
            let (h, reply) = self.recv(deadline, waiting_for).await?;
            if h.xid == xid && matches!(reply, Reply::BundleControl { .. } | Reply::Error(_)) {
                return Ok(());
            }
        }
    }

    fn encode(&mut self, req: &Request<'_>, xid: u32, out: &mut Vec<u8>) -> Result<()> {
        req.encode_into(xid, out)
            .map_err(|e| Error::Protocol(format!("cannot encode a request: {e}")))
    }

    async fn send(
        &mut self,
        reqs: &[Request<'_>],
        xid: u32,
        deadline: Instant,
        what: &'static str,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(64);
        for r in reqs {
            self.encode(r, xid, &mut out)?;
        }
        self.write(&out, deadline, what).await
    }

    async fn write(&mut self, bytes: &[u8], deadline: Instant, what: &'static str) -> Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.disconnected());
        };
        match timeout_at(deadline, conn.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lose(format!("writing {what}: {e}"))),
            Err(_) => Err(self.timed_out(what)),
        }
    }

    /// The next message that is not an ECHO_REQUEST (those are answered here).
    async fn recv(
        &mut self,
        deadline: Instant,
        waiting_for: &'static str,
    ) -> Result<(Header, Reply)> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(self.disconnected());
            };
            if let Some(h) = Header::parse(&conn.buf) {
                let len = usize::from(h.length);
                if len < HEADER_LEN {
                    let e = WireError::BadLength { length: h.length };
                    return Err(self.drop_conn(Error::Protocol(e.to_string())));
                }
                if conn.buf.len() >= len {
                    let frame: Vec<u8> = conn.buf.drain(..len).collect();
                    let (h, reply) = match wire::decode(&frame) {
                        Ok(m) => m,
                        Err(e) => return Err(self.drop_conn(Error::Protocol(e.to_string()))),
                    };
                    if let Reply::EchoRequest(data) = &reply {
                        let echo = Request::EchoReply(data);
                        self.send(&[echo], h.xid, deadline, "an echo reply").await?;
                        continue;
                    }
                    return Ok((h, reply));
                }
            }
            let read = timeout_at(deadline, conn.stream.read_buf(&mut conn.buf)).await;
            match read {
                Ok(Ok(0)) => return Err(self.lose("the switch closed the connection".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.lose(format!("reading: {e}"))),
                Err(_) => return Err(self.timed_out(waiting_for)),
            }
        }
    }

    fn drop_conn(&mut self, e: Error) -> Error {
        self.conn = None;
        self.lost = e.to_string();
        e
    }

    fn lose(&mut self, reason: String) -> Error {
        self.drop_conn(Error::Disconnected { reason })
    }

    fn timed_out(&mut self, waiting_for: &'static str) -> Error {
        self.drop_conn(Error::Timeout {
            waiting_for,
            after: self.timeout,
        })
    }

    fn disconnected(&self) -> Error {
        Error::Disconnected {
            reason: self.lost.clone(),
        }
    }
}
