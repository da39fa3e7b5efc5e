//! p11wld: a PKCS#11 module that groups the tokens of one label, across
//! several vendor modules, into one virtual work-load-distribution (WLD)
//! slot, and spreads the application's sessions over them.
//!
//! Layout: [`ffi`] is the C ABI (entry points, function tables, argument
//! checks); [`instance`] the state between `C_Initialize` and `C_Finalize`;
//! [`wld`] the virtual slots, sessions, object handles and login; [`vendor`]
//! loads and calls the real modules; [`config`] reads the TOML file.
#![deny(unsafe_op_in_unsafe_fn)]
// The macros that call a vendor function (`vcall!` and the FFI layer's
// helpers) pass the call's arguments, raw pointers the entry point already
// checked, straight into the unsafe call.
#![allow(clippy::macro_metavars_in_unsafe)]

pub mod config;
pub mod error;
pub mod events;
pub mod ffi;
pub mod health;
pub mod instance;
pub mod logging;
pub mod mechanism;
pub mod replicate;
pub mod template;
pub mod vendor;
pub mod waits;
pub mod wld;
