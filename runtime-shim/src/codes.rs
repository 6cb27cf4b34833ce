//! The shim's stable diagnostic codes. A code never changes meaning once released;
//! retired codes are not reused. `docs/runtime.md` lists them for users.
//!
//! S0xx: the bundle is refused. S1xx: an input event is refused (it changes nothing).
//! S2xx: a trace file for `simulate` (or a test file for `kalkic test`) is malformed. S3xx:
//! a request to the event API is refused before it reaches the engine. S4xx: the journal
//! cannot be used. All are declared in the model (`kalki_model::codes`), where `kalkic
//! explain` reads them too, and re-exported here: the shim's own are in [`SHIM`], the
//! model's in [`ALL`].

pub use kalki_model::codes::*;
