//! The SMTP protocol with no sockets, clock or disk: replies, command
//! parsing, paths and the inbound state machine.

pub mod address;
pub mod command;
pub mod reply;
pub mod response;
pub mod server;
