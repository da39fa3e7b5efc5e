//! Virtual WLD slots: members, sessions, object handles and login.

pub mod failover;
pub mod find;
pub mod info;
pub mod login;
pub mod member;
pub mod object;
pub mod ops;
pub mod session;
pub mod slot;
pub mod topology;

pub use member::Member;
pub use slot::VirtualSlot;
pub use topology::Topology;
