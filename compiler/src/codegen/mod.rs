//! Code generation: artifacts produced from the checked model. Each generator is a pure
//! function from [`crate::ir::Model`] to text; the binary decides where the text goes.

pub mod dot;
