//! The SMTP protocol with no sockets, clock or disk: replies, command
//! parsing, paths, the inbound state machine and the client dialogue.

pub mod address;
pub mod client;
pub mod command;
pub mod reply;
pub mod response;
pub mod server;
