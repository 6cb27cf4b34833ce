//! The stable diagnostic codes. A code never changes meaning once released; retired codes
//! are not reused. `docs/language.md` and `docs/verification.md` list them for users.
//!
//! This file holds K1xx and the summaries of K0xx. The verifier's K2xx are in
//! [`crate::verify::codes`], among them K208 (data-plane interference) and K212
//! (fail-open), which `kalkic build` checks on the emitted OpenFlow rules; K214 (port
//! space) is in [`crate::codegen::bundle`]. [`crate::explain`] gathers every table into
//! the one registry that `kalkic explain`, the SARIF rules and the docs checks read.

use kalki_lang::SyntaxCode;

// K0xx: syntax (from `kalki_lang::SyntaxCode`).

/// Every K0xx code with a one-line summary.
pub const SYNTAX_CODES: &[(&str, &str)] = &[
    (SyntaxCode::InvalidToken.code(), "bytes that form no token"),
    (
        SyntaxCode::UnexpectedToken.code(),
        "a token where the grammar does not allow it",
    ),
    (
        SyntaxCode::UnexpectedEof.code(),
        "the file ends in the middle of something",
    ),
    (
        SyntaxCode::InvalidValue.code(),
        "a well-formed token with a value not accepted here",
    ),
];

/// An import names a module that does not exist.
pub const UNRESOLVED_MODULE: &str = "K101";
/// Modules import each other in a cycle.
pub const IMPORT_CYCLE: &str = "K102";
/// A name that is not declared where it is used.
pub const UNKNOWN_NAME: &str = "K103";
/// The same name declared twice in one scope.
pub const DUPLICATE: &str = "K104";
/// An operand or value of the wrong type.
pub const TYPE_MISMATCH: &str = "K105";
/// A range that is empty, or a value outside its declared range.
pub const OUT_OF_RANGE: &str = "K106";
/// A required part is missing (an image, a state's chain, a device's address, ...).
pub const MISSING: &str = "K107";
/// A chain that cannot be built: `pass`/`drop` mixed with µmboxes, a missing argument.
pub const BAD_CHAIN: &str = "K108";
/// A `{hole}` in a µmbox argument that names no parameter.
pub const BAD_TEMPLATE: &str = "K109";
/// A construct used where it has no meaning (a device's state inside a type's guard,
/// the clock in an assertion, ...).
pub const BAD_CONTEXT: &str = "K110";
/// A zero or otherwise unusable count, window or duration.
pub const BAD_QUANTITY: &str = "K111";
/// A file given to the compiler that could not be read (reported as a usage error).
pub const UNREADABLE: &str = "K112";
/// An expression nested deeper than [`MAX_EXPR_DEPTH`].
pub const TOO_DEEP: &str = "K113";
/// An integer expression whose value, over the declared ranges, can leave 64 bits.
pub const OVERFLOW: &str = "K114";

/// A µmbox's traffic contract or secret is malformed, or promises what the µmbox's mode
/// cannot do.
pub const BAD_CONTRACT: &str = "K115";
/// A device type's MQTT binding (`telemetry`, `command ... publish`) or a device's topics
/// are malformed: a path into a text payload, a scale that is zero, too large or on a
/// non-integer, a map with a scale or a key twice, a hole naming no parameter, a topic
/// that is not exact, two devices reading one topic, a command on a topic the site reads.
pub const BAD_BINDING: &str = "K116";
/// A site's nodes are misdeclared: a site with both a `bridge` line and nodes, a device
/// on no node in a site with nodes, or a device naming a node in a site without.
/// (An unknown node is K103, a node declared twice K104, a site with neither K107.)
pub const NODES: &str = "K117";

/// The deepest expression the compiler accepts. Real conditions are a few levels deep;
/// the limit keeps every later (recursive) stage within a small stack.
pub const MAX_EXPR_DEPTH: usize = 128;

/// Every K1xx code with a one-line summary (read through [`crate::explain`]).
pub const NAME_AND_TYPE_CODES: &[(&str, &str)] = &[
    (UNRESOLVED_MODULE, "import of a module that does not exist"),
    (IMPORT_CYCLE, "modules import each other in a cycle"),
    (UNKNOWN_NAME, "unknown name"),
    (DUPLICATE, "name declared twice"),
    (TYPE_MISMATCH, "type mismatch"),
    (OUT_OF_RANGE, "empty range or value out of range"),
    (MISSING, "required part missing"),
    (BAD_CHAIN, "invalid µmbox chain"),
    (BAD_TEMPLATE, "argument template names no parameter"),
    (BAD_CONTEXT, "construct not allowed here"),
    (BAD_QUANTITY, "zero or unusable count, window or duration"),
    (UNREADABLE, "source file could not be read"),
    (TOO_DEEP, "expression nested too deeply"),
    (OVERFLOW, "integer arithmetic can leave 64 bits"),
    (BAD_CONTRACT, "invalid µmbox traffic contract or secret"),
    (BAD_BINDING, "invalid MQTT binding or topic"),
    (
        NODES,
        "a site's nodes misdeclared or a device's node missing",
    ),
];
