//! The Kalki policy compiler.
