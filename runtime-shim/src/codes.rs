//! The shim's stable diagnostic codes. A code never changes meaning once released;
//! retired codes are not reused. `docs/runtime.md` lists them for users.
//!
//! S0xx: the bundle is refused. S1xx: an input event is refused (it changes nothing).
//! S2xx: a trace file for `simulate` (or a test file for `kalkic test`) is malformed.
//! These belong to the model (`kalki_model::codes`, re-exported here). S3xx: a request to
//! the event API is refused before it reaches the engine. S4xx: the journal cannot be
//! used.

pub use kalki_model::codes::*;

// S2xx: trace files (`kalki_model::trace`): in the model, re-exported above.

// S3xx: the event API (`api.rs`). Engine refusals keep their S1xx codes.

/// A request without `Authorization: Bearer TOKEN`, or with the wrong token.
pub const UNAUTHORIZED: &str = "S301";
/// A request body that is not JSON.
pub const BAD_JSON: &str = "S302";
/// A JSON body of the wrong shape: a field missing, unknown, given twice or ill-typed.
pub const BAD_BODY: &str = "S303";
/// A request body larger than the API accepts.
pub const TOO_LARGE: &str = "S304";
/// A request body that is not declared `application/json`.
pub const BAD_MEDIA_TYPE: &str = "S305";
/// A path the API does not have, or a method it does not allow there.
pub const NO_SUCH_ENDPOINT: &str = "S306";
/// The shim did not answer in time, or is shutting down.
pub const UNAVAILABLE: &str = "S307";
/// A request body that did not arrive in full in time.
pub const TOO_SLOW: &str = "S308";

// S4xx: the journal (`journal.rs`).

/// The journal cannot be opened or created.
pub const JOURNAL_OPEN: &str = "S401";
/// The journal was written by a shim with another schema version.
pub const JOURNAL_VERSION: &str = "S402";
/// Reading or writing the journal failed.
pub const JOURNAL_IO: &str = "S403";
/// A journal entry cannot be decoded, or a value does not fit it.
pub const JOURNAL_CORRUPT: &str = "S404";

/// The shim's own codes (S3xx, S4xx) with a one-line summary, for documentation; the
/// model's are in [`ALL`].
pub const SHIM: &[(&str, &str)] = &[
    (UNAUTHORIZED, "missing or wrong API token"),
    (BAD_JSON, "request body is not JSON"),
    (
        BAD_BODY,
        "request body has missing, unknown or ill-typed fields",
    ),
    (TOO_LARGE, "request body too large"),
    (BAD_MEDIA_TYPE, "request body is not application/json"),
    (NO_SUCH_ENDPOINT, "no such endpoint or method"),
    (UNAVAILABLE, "the shim did not answer in time"),
    (TOO_SLOW, "request body did not arrive in time"),
    (JOURNAL_OPEN, "the journal cannot be opened"),
    (JOURNAL_VERSION, "the journal has another schema version"),
    (JOURNAL_IO, "reading or writing the journal failed"),
    (JOURNAL_CORRUPT, "a journal entry cannot be decoded"),
];
