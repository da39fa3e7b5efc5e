//! Token replication and verification.
//!
//! Replication makes destination tokens hold every object of a master
//! token, with the same attributes and the master's label; verification
//! compares tokens and lists every difference. Both work on the physical
//! tokens through the vendor modules, outside the WLD layer, and check
//! every precondition on every token before anything is written.

pub mod attributes;
pub mod copy;
pub mod display;
pub mod objects;
pub mod plan;
pub mod report;
pub mod run;
pub mod slots;
pub mod token;
pub mod transport;
pub mod verify;
