//! Sites on several nodes (`docs/scale-out.md`): a controller that runs the site's engine
//! with its input log, postures and leadership in etcd ([`controller`]), and node agents
//! that bring their node's devices to those postures ([`agent`]). The two never talk to
//! each other; etcd ([`store`]) orders everything.

pub mod agent;
pub mod controller;
pub mod store;

use crate::manifest::Manifest;

/// The node device `device` of a site's manifest is attached to (`node NAME` in the
/// policy); `None` for a site on one node.
pub fn device_node(manifest: &Manifest, device: usize) -> Option<&str> {
    manifest.devices.get(device)?.node.as_deref()
}
