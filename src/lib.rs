//! postern: a mail transfer agent built around STARTTLS.
//!
//! The modules in the order a message meets them:
//!
//! - [`net`]: the mio acceptor hands each connection to a worker thread
//!   (`listener`), which runs the session (`driver`) with per-address
//!   AUTH limits (`throttle`); [`watchdog`] gives every socket, inbound
//!   and outbound, deadlines a peer cannot stretch.
//! - [`tls`]: certificates (`pki`), the server and client configurations,
//!   and the [`tls::stream::Stream`] a session upgrades in place.
//! - [`smtp`]: the protocol without I/O: commands, the reply table, the
//!   inbound state machine (`server`), paths, replies from servers
//!   (`response`) and the client dialogue (`client`).
//! - [`rules`]: `match` rules, which action takes a recipient.
//! - [`spool`]: the durable queue; "250" means it is on disk.
//! - [`delivery`]: the scheduler and per-destination queues, Maildir
//!   (`local`), SMTP (`remote`) with its one TLS decision
//!   (`tls_decision`), typed results (`outcome`) and DSNs (`bounce`).
//! - [`dns`]: MX and address lookups for delivery.
//! - [`config`]: postern.conf(5) and its tables, read once into values.
//! - Around them: [`control`] (posternctl's socket), [`stats`],
//!   [`logging`], [`passwd`] (crypt(3) hashes), [`sys`] (privileges, the
//!   pid file), [`time`].

// One exception, `sys::keep_pid_file`'s fork(2), allowed where it stands.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod buffers;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod https;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod passwd;
pub mod rules;
pub mod smtp;
pub mod spool;
pub mod stats;
pub mod sts;
pub mod sys;
pub mod time;
pub mod tls;
pub mod tlsrpt;
pub mod watchdog;
