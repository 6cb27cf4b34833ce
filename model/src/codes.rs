//! The runtime's stable diagnostic codes: S0xx, the bundle is refused; S1xx, an input event
//! is refused (it changes nothing); S2xx, a trace or test file is malformed (the model reads
//! both); and the shim's own S3xx (event API) and S4xx (journal), declared here so that
//! `kalkic explain` can explain them without linking the shim (`kalki_shim::codes`
//! re-exports them all). A code never changes meaning once released; retired codes are not
//! reused. `docs/runtime.md` lists them for users.

// S0xx: loading a bundle (`bundle.rs`).

/// `manifest.json` or a listed file could not be read.
pub const UNREADABLE: &str = "S001";
/// A file is not valid JSON, or not of the expected shape.
pub const MALFORMED: &str = "S002";
/// The manifest's `format` is not one this shim understands.
pub const UNKNOWN_FORMAT: &str = "S003";
/// A file listed in the manifest is missing.
pub const MISSING_FILE: &str = "S004";
/// A file's sha256 differs from the manifest's.
pub const DIGEST_MISMATCH: &str = "S005";
/// The manifest contradicts itself: an index out of range, an ill-typed expression, a
/// reference to an unlisted file, a duplicate name.
pub const INCONSISTENT: &str = "S006";
/// A listed path leaves the bundle directory (absolute, `..`, empty components).
pub const BAD_PATH: &str = "S007";
/// `kalki-shim run` or `apply` was given a bundle that is not a site on one node: the
/// bundle of a site that spans several nodes (the controller's and the agents'), or one
/// node's sub-bundle (`part_of`), which is a part of a site and not a site.
pub const NOT_ONE_NODE: &str = "S008";
/// `kalki-shim controller` was given a site whose rules send device commands, or whose
/// devices read telemetry from MQTT, which the controller does not carry yet, without
/// the flag that accepts it (`--without-commands`, `--without-mqtt`).
pub const NOT_FOR_CONTROLLER: &str = "S009";

// S1xx: input events (`engine.rs`).

/// An event names a device the site does not have.
pub const UNKNOWN_DEVICE: &str = "S101";
/// A reading names a variable the device does not sense.
pub const UNKNOWN_VARIABLE: &str = "S102";
/// A reading's value has the wrong type (or names no member of the variable's enum).
pub const WRONG_TYPE: &str = "S103";
/// A reading's integer lies outside the variable's declared range.
pub const OUT_OF_RANGE: &str = "S104";
/// A reading that reports no variable.
pub const EMPTY_READING: &str = "S105";
/// An alert the device cannot receive: no µmbox of its chains emits it, its type does
/// not declare it, and no rule raises it on the device.
pub const UNKNOWN_ALERT: &str = "S106";
/// An alert's source is not a µmbox of the device's chains that emits that alert.
pub const UNKNOWN_SOURCE: &str = "S107";
/// An operator action the language does not have.
pub const UNKNOWN_ACTION: &str = "S108";
/// An event earlier than the engine's current time.
pub const TIME_BACKWARDS: &str = "S109";
/// An event more than [`crate::engine::MAX_STEP_MS`] after the engine's current time.
pub const TOO_FAR_AHEAD: &str = "S110";
/// An alert's source is a µmbox of the device that emits the alert, but the device's chain
/// does not deploy it in the state the device is in when the alert arrives.
pub const NOT_DEPLOYED: &str = "S111";
/// An alert without a source (the device's own) that the device's type does not declare:
/// only a µmbox (named as its source) or a rule can raise it.
pub const NOT_OWN: &str = "S112";

// S12x: MQTT messages (`telemetry.rs`): the message changes nothing.

/// A message's payload is unreadable: longer than 64 KiB, not UTF-8, or (for a JSON
/// binding) not a JSON object.
pub const BAD_PAYLOAD: &str = "S120";
/// A message lacks a path its binding reads.
pub const MISSING_FIELD: &str = "S121";
/// A message's value has the wrong type for its variable, or is none of its map's values.
pub const FIELD_TYPE: &str = "S122";
/// A message's number is not whole after scaling and its binding does not round, or does
/// not fit 64 bits.
pub const NOT_WHOLE: &str = "S123";

// S2xx: trace files (`trace.rs`) and policy test files (`policy_test.rs`).

/// A trace line that is not a JSON object.
pub const TRACE_SYNTAX: &str = "S201";
/// A trace line with missing, unknown or ill-typed fields.
pub const TRACE_SHAPE: &str = "S202";
/// A trace line whose `t_ms` is earlier than the line before.
pub const TRACE_ORDER: &str = "S203";
/// A trace line with an MQTT message on a topic no device of the bundle binds.
pub const TRACE_UNBOUND_TOPIC: &str = "S204";
/// A `mosquitto_sub` trace line whose `payload` is not all of the payload (`payloadlen`).
pub const TRACE_PAYLOAD_LOST: &str = "S205";

/// A test file (`kalkic test`) whose structure is wrong: a line outside any test, no
/// test at all, a test that expects nothing, two tests with one name.
pub const TEST_STRUCTURE: &str = "S210";
/// A test header or expectation line with missing, unknown or ill-typed fields.
pub const TEST_SHAPE: &str = "S211";
/// An expectation that names a device, state, command or rule the policy does not have.
pub const TEST_UNKNOWN: &str = "S212";

/// Every code of the model (S0xx, S1xx, S2xx) with a one-line summary, for documentation.
pub const ALL: &[(&str, &str)] = &[
    (UNREADABLE, "a bundle file could not be read"),
    (
        MALFORMED,
        "a bundle file is not valid JSON of the expected shape",
    ),
    (UNKNOWN_FORMAT, "unknown bundle format"),
    (MISSING_FILE, "a listed file is missing"),
    (DIGEST_MISMATCH, "a file's sha256 differs from the manifest"),
    (INCONSISTENT, "the manifest contradicts itself"),
    (BAD_PATH, "a listed path leaves the bundle directory"),
    (
        NOT_ONE_NODE,
        "`run`/`apply` given a site spanning nodes, or a node's part of one",
    ),
    (
        NOT_FOR_CONTROLLER,
        "`controller` given a site with device commands or MQTT it does not carry",
    ),
    (UNKNOWN_DEVICE, "unknown device"),
    (UNKNOWN_VARIABLE, "unknown variable"),
    (WRONG_TYPE, "value of the wrong type"),
    (OUT_OF_RANGE, "value out of the declared range"),
    (EMPTY_READING, "reading with no values"),
    (UNKNOWN_ALERT, "alert the device cannot receive"),
    (
        UNKNOWN_SOURCE,
        "alert source is not a µmbox of the device that emits it",
    ),
    (UNKNOWN_ACTION, "unknown operator action"),
    (TIME_BACKWARDS, "event earlier than the current time"),
    (TOO_FAR_AHEAD, "event too far after the current time"),
    (
        NOT_DEPLOYED,
        "alert source is not deployed in the device's current state",
    ),
    (
        NOT_OWN,
        "alert without a source that the device's type does not declare",
    ),
    (
        BAD_PAYLOAD,
        "an MQTT payload is too large, not UTF-8, or not a JSON object",
    ),
    (
        MISSING_FIELD,
        "an MQTT message lacks a path its binding reads",
    ),
    (
        FIELD_TYPE,
        "an MQTT value has the wrong type or is not in the binding's map",
    ),
    (
        NOT_WHOLE,
        "an MQTT number is not whole after scaling (no rounding) or too big",
    ),
    (TRACE_SYNTAX, "trace line is not a JSON object"),
    (
        TRACE_SHAPE,
        "trace line has missing, unknown or ill-typed fields",
    ),
    (TRACE_ORDER, "trace line earlier than the one before"),
    (
        TRACE_UNBOUND_TOPIC,
        "trace message on a topic the bundle does not bind",
    ),
    (
        TRACE_PAYLOAD_LOST,
        "trace message whose recorded payload is incomplete",
    ),
    (
        TEST_STRUCTURE,
        "test file line outside a test, no test, or a test expecting nothing",
    ),
    (
        TEST_SHAPE,
        "test header or expectation has missing, unknown or ill-typed fields",
    ),
    (
        TEST_UNKNOWN,
        "expectation names something the policy does not have",
    ),
];

// S3xx: the event API (`kalki_shim::api`). Engine refusals keep their S1xx codes.

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

// S4xx: the journal (`kalki_shim::journal`).

/// The journal cannot be opened or created.
pub const JOURNAL_OPEN: &str = "S401";
/// The journal was written by a shim with another schema version.
pub const JOURNAL_VERSION: &str = "S402";
/// Reading or writing the journal failed.
pub const JOURNAL_IO: &str = "S403";
/// A journal entry cannot be decoded, or a value does not fit it.
pub const JOURNAL_CORRUPT: &str = "S404";

/// The shim's own codes (S3xx, S4xx) with a one-line summary, for documentation; the
/// model's are in [`ALL`]. They are declared here, not in the shim, so that `kalkic explain`
/// (which must not link the shim's tokio, Docker and SQLite) can explain them.
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
