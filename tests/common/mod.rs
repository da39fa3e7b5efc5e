//! Integration-test fixture: process isolation, SoftHSM2 token directories,
//! HSMs served by `p11-kit server`, the standard key set and p11wld
//! configuration files.
//!
//! Every test file includes it with `mod common;` and defines its tests with
//! [`isolated!`](crate::isolated), so that each test runs in a process of its
//! own:
//!
//! ```ignore
//! mod common;
//!
//! isolated! {
//!     fn wld_slot_signs() {
//!         let hsms = common::three_hsm_processes(false);
//!         let config = hsms.write_config(common::setups::DEFAULT_EXTRA);
//!         let _config_env = config.set_env();
//!         let pkcs11 = common::client::load_initialized(&common::paths::p11wld_module());
//!         // ... sign through p11wld, then check the signature with
//!         // common::keys::verify_rsa_pkcs1_sha256.
//!     }
//! }
//! ```

// Each test file uses a different part of the fixture, so every file would
// otherwise warn about the helpers and re-exports that it does not use.
#![allow(dead_code, unused_imports)]

pub mod calls;
pub mod client;
pub mod config;
pub mod env;
pub mod isolate;
pub mod keys;
pub mod p11kit;
pub mod paths;
pub mod procfs;
pub mod raw;
pub mod setups;
pub mod softhsm;
pub mod table;
pub mod workload;

pub use config::{config_text, ConfigFile, ModuleEntry};
pub use env::ScopedEnv;
pub use p11kit::P11KitHsm;
pub use setups::{
    one_softhsm_with_tokens, three_hsm_processes, OneSoftHsm, ThreeHsms, OTHER_LABEL, SO_PIN,
    USER_PIN, WLD_LABEL,
};
pub use softhsm::{SoftHsm, TokenSummary};
