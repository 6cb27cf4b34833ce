//! The standard library (`import std::...`), compiled into the binary so a bundle never
//! depends on where `kalkic` was installed. Sources live in `stdlib-policies/`.

/// `(module path below std, source text)`.
pub const MODULES: &[(&str, &str)] = &[
    (
        "devices",
        include_str!("../../stdlib-policies/devices.kalki"),
    ),
    ("mqtt", include_str!("../../stdlib-policies/mqtt.kalki")),
    (
        "umboxes",
        include_str!("../../stdlib-policies/umboxes.kalki"),
    ),
];

/// The text of `std::NAME` (`NAME` uses `/` between segments).
pub fn module(name: &str) -> Option<&'static str> {
    MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}
