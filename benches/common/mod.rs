//! Code shared by the benches (each bench uses part of it).
#![allow(dead_code)]

pub mod content;
pub mod host;
