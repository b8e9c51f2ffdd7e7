//! postern: a mail transfer agent built around STARTTLS.
//!
//! The layout follows the path of a message:
//! [`net`] accepts connections and runs sessions, [`smtp`] is the dialogue
//! (no I/O), [`spool`] makes messages durable, [`config`] reads
//! postern.conf(5).

// One exception, `sys::keep_pid_file`'s fork(2), allowed where it stands.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod delivery;
pub mod dns;
pub mod logging;
pub mod net;
pub mod passwd;
pub mod rules;
pub mod smtp;
pub mod spool;
pub mod stats;
pub mod sys;
pub mod time;
pub mod tls;
