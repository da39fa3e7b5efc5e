//! p11wld: a PKCS#11 module that groups the tokens of one label, across
//! several vendor modules, into one virtual work-load-distribution slot.

pub mod config;
pub mod error;
pub mod logging;
