//! `fake-replies`, minimal: isolates the device's control protocol. Kalki's
//! u8-fake-replies answered WeMo UPnP requests itself; this version does not terminate
//! TCP, so it cannot answer. It drops every TCP packet to or from the protocol's control
//! ports, so commands never reach the device (the controller sees no answer instead of a
//! plausible one), and raises `intercepted_command` for each connection attempt or
//! request from the uplink (held off per source). With `--log-requests true` every
//! intercepted request is also logged to stderr.

use super::{Dir, Function, Verdict};
use crate::event::{Alert, AlertKind};
use crate::http;
use crate::packet::Ipv4;
use crate::window::Ms;
use clap::{ArgAction, Args as ClapArgs, ValueEnum};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Upnp,
    Hue,
    Http,
}

impl Protocol {
    /// The device's TCP ports that carry the protocol's commands.
    pub fn ports(self) -> &'static [u16] {
        match self {
            // WeMo's UPnP control endpoints move between these.
            Protocol::Upnp => &[49152, 49153, 49154],
            Protocol::Hue => &[80, 443],
            Protocol::Http => &[80, 443, 8080],
        }
    }
}

#[derive(Debug, Clone, ClapArgs)]
pub struct Args {
    /// Whose commands are intercepted: upnp, hue or http.
    #[arg(long, value_name = "PROTOCOL", default_value = "upnp")]
    pub protocol: Protocol,
    /// Log each intercepted request to stderr (true or false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = true)]
    pub log_requests: bool,
}

#[derive(Debug)]
pub struct FakeReplies {
    args: Args,
    intercepted: u64,
    notes: Vec<String>,
}

impl FakeReplies {
    pub fn new(args: Args) -> FakeReplies {
        FakeReplies {
            args,
            intercepted: 0,
            notes: Vec::new(),
        }
    }
}

impl Function for FakeReplies {
    fn packet(&mut self, _now: Ms, dir: Dir, p: &Ipv4<'_>, alerts: &mut Vec<Alert>) -> Verdict {
        let Some(t) = p.tcp() else {
            return Verdict::Forward;
        };
        let ports = self.args.protocol.ports();
        let to_control = ports.contains(&t.dport) && dir != Dir::FromDevice;
        let from_control = ports.contains(&t.sport) && dir != Dir::ToDevice;
        if from_control {
            return Verdict::Drop;
        }
        if !to_control {
            return Verdict::Forward;
        }
        let request = http::request(t.payload);
        if t.flags.is_syn() || request.is_some() {
            self.intercepted += 1;
            let mut a = Alert::new(AlertKind::InterceptedCommand, p.src)
                .with("target", p.dst.to_string())
                .with("port", t.dport);
            if let Some(r) = &request {
                a = a.with("method", r.method).with("path", r.path());
                if let Some(action) = r.header("soapaction") {
                    a = a.with("soapaction", action.trim_matches('"'));
                }
            }
            if self.args.log_requests {
                self.notes.push(match &request {
                    Some(r) => format!(
                        "intercepted {} {} from {} to port {}",
                        r.method,
                        r.path(),
                        p.src,
                        t.dport
                    ),
                    None => format!(
                        "intercepted a connection from {} to port {}",
                        p.src, t.dport
                    ),
                });
            }
            alerts.push(a);
        }
        Verdict::Drop
    }

    fn stats(&mut self, out: &mut Map<String, Value>, _periodic: bool) {
        out.insert("intercepted".into(), self.intercepted.into());
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::craft::Craft;
    use crate::packet::{parse, TcpFlags};
    use std::net::Ipv4Addr;

    const CTRL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
    const PLUG: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);

    #[test]
    fn upnp_commands_never_reach_the_plug() {
        let mut f = FakeReplies::new(Args {
            protocol: Protocol::Upnp,
            log_requests: true,
        });
        let mut al = Vec::new();
        let syn = Craft::tcp(CTRL, 40000, PLUG, 49153, TcpFlags::SYN).build();
        let soap = Craft::tcp(CTRL, 40000, PLUG, 49153, TcpFlags::PSH | TcpFlags::ACK)
            .payload(b"POST /upnp/control/basicevent1 HTTP/1.1\r\nSOAPACTION: \"urn:Belkin:service:basicevent:1#SetBinaryState\"\r\n\r\n")
            .build();
        let ack = Craft::tcp(CTRL, 40000, PLUG, 49153, TcpFlags::ACK).build();
        let reply = Craft::tcp(PLUG, 49153, CTRL, 40000, TcpFlags::SYN | TcpFlags::ACK).build();
        let web = Craft::tcp(CTRL, 40001, PLUG, 80, TcpFlags::SYN).build();
        let mut go = |fr: &[u8], dir| f.packet(0, dir, &parse(fr).unwrap(), &mut al);
        assert_eq!(go(&syn, Dir::ToDevice), Verdict::Drop);
        assert_eq!(go(&soap, Dir::ToDevice), Verdict::Drop);
        assert_eq!(go(&ack, Dir::ToDevice), Verdict::Drop);
        assert_eq!(go(&reply, Dir::FromDevice), Verdict::Drop);
        assert_eq!(go(&web, Dir::ToDevice), Verdict::Forward);
        assert_eq!(al.len(), 2);
        assert!(al
            .iter()
            .all(|a| a.kind == AlertKind::InterceptedCommand && a.source == CTRL));
        assert_eq!(
            al[1].details["soapaction"],
            "urn:Belkin:service:basicevent:1#SetBinaryState"
        );
        assert_eq!(al[1].details["path"], "/upnp/control/basicevent1");
        let notes = f.take_notes();
        assert_eq!(notes.len(), 2);
        assert!(notes[1].contains("POST /upnp/control/basicevent1"));
        assert!(f.take_notes().is_empty());
    }

    #[test]
    fn the_device_itself_may_still_use_those_ports_as_a_client() {
        let mut f = FakeReplies::new(Args {
            protocol: Protocol::Hue,
            log_requests: false,
        });
        let mut al = Vec::new();
        // The bridge fetching an update from a server's port 443.
        let out = Craft::tcp(PLUG, 50000, CTRL, 443, TcpFlags::SYN).build();
        assert_eq!(
            f.packet(0, Dir::FromDevice, &parse(&out).unwrap(), &mut al),
            Verdict::Forward
        );
        let back = Craft::tcp(CTRL, 443, PLUG, 50000, TcpFlags::SYN | TcpFlags::ACK).build();
        assert_eq!(
            f.packet(0, Dir::ToDevice, &parse(&back).unwrap(), &mut al),
            Verdict::Forward
        );
        assert!(al.is_empty() && f.take_notes().is_empty());
    }
}
