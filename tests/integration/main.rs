//! Integration tests: the real binary on loopback, driven by real clients.
//! One test binary (ripgrep's layout); each test gets its own temp dir,
//! certificate, config and daemon.

mod clientcert;
mod clients;
mod daemon;
mod dane;
mod delivery;
mod dnssec;
mod docs;
mod harness;
mod hostile;
mod inbound;
mod metrics;
mod ops;
mod peer;
mod privilege;
mod proxy;
mod requiretls;
mod security;
mod sts;
