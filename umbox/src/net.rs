//! The µmbox's network edge: waiting for its interfaces and raw AF_PACKET sockets on
//! them. Everything goes through `nix`'s safe wrappers; there is no `unsafe` here.

use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recvfrom, send, setsockopt, socket, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag,
    SockProtocol, SockType,
};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// `sll_pkttype` of a frame this host sent (by another socket or its own stack).
const PACKET_OUTGOING: u8 = 4;

/// What is known of one interface.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub link: LinkAddr,
    pub up: bool,
}

/// Looks the named interfaces up; `None` for one that does not exist.
pub fn lookup(names: &[&str]) -> Result<Vec<Option<Iface>>, Errno> {
    let mut found: Vec<Option<Iface>> = vec![None; names.len()];
    for ifa in getifaddrs()? {
        let Some(i) = names.iter().position(|n| *n == ifa.interface_name) else {
            continue;
        };
        if let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr()) {
            found[i] = Some(Iface {
                name: ifa.interface_name.clone(),
                link: *link,
                up: ifa.flags.contains(InterfaceFlags::IFF_UP),
            });
        }
    }
    Ok(found)
}

/// Why the interfaces did not come up in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub missing: Vec<String>,
    pub down: Vec<String>,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing: {}", self.missing.join(", ")));
        }
        if !self.down.is_empty() {
            parts.push(format!("down: {}", self.down.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Waits until every named interface exists and is up, checking every 50 ms, for at
/// most `timeout`.
pub fn wait_for(names: &[&str], timeout: Duration) -> Result<Vec<Iface>, WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = lookup(names).map_err(WaitError::Lookup)?;
        if found.iter().all(|f| f.as_ref().is_some_and(|i| i.up)) {
            return Ok(found.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            let mut nr = NotReady {
                missing: Vec::new(),
                down: Vec::new(),
            };
            for (n, f) in names.iter().zip(&found) {
                match f {
                    None => nr.missing.push(n.to_string()),
                    Some(i) if !i.up => nr.down.push(n.to_string()),
                    Some(_) => {}
                }
            }
            return Err(WaitError::Timeout(nr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug)]
pub enum WaitError {
    Lookup(Errno),
    Timeout(NotReady),
}

/// What one receive call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// A frame of this many bytes arrived on the interface.
    Frame(usize),
    /// Something to ignore: a frame this host sent out, or one from another interface
    /// that was queued before the socket was bound.
    Ignored,
    /// Nothing to read now.
    Empty,
}

/// A raw AF_PACKET socket bound to one interface, non-blocking.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: usize,
    pub name: String,
}

impl PacketSocket {
    pub fn open(iface: &Iface) -> Result<PacketSocket, Errno> {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )?;
        // The link address from getifaddrs has the interface index and protocol 0, which
        // binding takes as "the socket's protocol" (all).
        bind(fd.as_raw_fd(), &iface.link)?;
        // Room for bursts; the kernel caps it at net.core.rmem_max. Best effort.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        let _ = setsockopt(&fd, sockopt::SndBuf, &(4 << 20));
        Ok(PacketSocket {
            fd,
            ifindex: iface.link.ifindex(),
            name: iface.name.clone(),
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads one frame into `buf` if one is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Result<Recv, Errno> {
        match recvfrom::<LinkAddr>(self.fd.as_raw_fd(), buf) {
            Ok((n, Some(from))) => Ok(
                if from.pkttype() == PACKET_OUTGOING || from.ifindex() != self.ifindex {
                    Recv::Ignored
                } else {
                    Recv::Frame(n)
                },
            ),
            // No address (a kernel older than 5.12 reports a short one): the frame is
            // taken as incoming.
            Ok((n, None)) => Ok(Recv::Frame(n)),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(Recv::Empty),
            Err(e) => Err(e),
        }
    }

    /// Sends one frame out of the interface, waiting up to 10 ms for buffer space.
    pub fn send(&self, frame: &[u8]) -> Result<(), Errno> {
        for _ in 0..2 {
            match send(self.fd.as_raw_fd(), frame, MsgFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::EAGAIN) | Err(Errno::ENOBUFS) | Err(Errno::EINTR) => {
                    let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(10u8));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EAGAIN)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn loopback_exists_and_a_made_up_name_does_not() {
        let found = lookup(&["lo", "kalki-no-such"]).unwrap();
        assert!(found[0]
            .as_ref()
            .is_some_and(|i| i.up && i.link.ifindex() > 0));
        assert!(found[1].is_none());
    }

    #[test]
    fn waiting_times_out_with_the_missing_names() {
        match wait_for(&["lo", "kalki-no-such"], Duration::from_millis(120)) {
            Err(WaitError::Timeout(nr)) => {
                assert_eq!(nr.missing, ["kalki-no-such"]);
                assert!(nr.down.is_empty());
                assert_eq!(nr.to_string(), "missing: kalki-no-such");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(wait_for(&["lo"], Duration::ZERO).unwrap()[0].name, "lo");
    }
}
