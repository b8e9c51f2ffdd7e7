//! The inbound side's sockets: the mio acceptor ([`listener`]), the
//! session driver ([`driver`]) and AUTH failures per client address
//! ([`throttle`]). Delivery never imports this module.

pub mod driver;
pub mod listener;
pub mod proxy;
pub mod throttle;

use std::sync::Arc;

use crate::config::{Config, Listener};
use crate::rules::ListenerPolicy;
use crate::smtp::server::{Params, Policy, TlsMode};

/// Everything a session on one listener needs, built once per
/// configuration so no session re-reads or re-parses anything.
pub struct Endpoint {
    /// The configuration it was built from.
    pub cfg: Arc<Config>,
    /// The `listen on` directive.
    pub listener: Listener,
    /// Session parameters.
    pub params: Params,
    /// Rules and credentials.
    pub policy: Arc<dyn Policy>,
    /// TLS server config, when the listener has a pki.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Client certificates (`ca FILE ask-cert | verify-cert`).
    pub client_auth: Option<Arc<crate::tls::client_auth::ClientAuth>>,
}

impl Endpoint {
    /// Build the endpoint for `l`.
    pub fn build(cfg: &Arc<Config>, l: &Listener) -> Result<Endpoint, String> {
        let client_auth = match &l.client_ca {
            Some(c) => Some(Arc::new(
                crate::tls::client_auth::ClientAuth::new(&c.ca.certs, c.require)
                    .map_err(|e| format!("CA file {}: {e}", c.ca.path.display()))?,
            )),
            None => None,
        };
        let tls = match &l.pki {
            Some(name) if l.tls != TlsMode::Off => {
                let pki = cfg
                    .pki
                    .get(name)
                    .ok_or_else(|| format!("no pki named '{name}'"))?;
                Some(
                    crate::tls::server::config(pki, cfg.pki.values(), client_auth.as_ref())
                        .map_err(|e| format!("TLS setup for {}: {e}", l.addr))?,
                )
            }
            _ => None,
        };
        let lim = &cfg.limits;
        Ok(Endpoint {
            params: Params {
                hostname: l.hostname.clone().unwrap_or_else(|| cfg.hostname.clone()),
                tls: l.tls,
                tls_available: tls.is_some(),
                auth: l.auth.is_some(),
                max_message_size: lim.max_message_size,
                max_recipients: lim.max_recipients,
                max_errors: lim.max_errors,
                max_auth_failures: lim.auth_failures,
                auth_failure_delay: lim.auth_delay,
                max_hops: lim.max_hops,
                bare_newline: cfg.bare_newline,
                auth_failures_per_ip: lim.auth_failures_per_ip,
                junk_commands: lim.junk_commands,
            },
            policy: Arc::new(ListenerPolicy::new(cfg.clone(), l.auth.clone())),
            cfg: cfg.clone(),
            listener: l.clone(),
            tls,
            client_auth,
        })
    }
}

/// The key a client is counted under for per-address limits: its IPv4
/// address, or its IPv6 network of `prefix` bits (one host usually has a
/// whole /64, so counting single IPv6 addresses limits nothing).
pub fn client_key(ip: std::net::IpAddr, prefix: u8) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = match prefix {
                0 => 0,
                p if p >= 128 => u128::MAX,
                p => u128::MAX << (128 - u32::from(p)),
            };
            std::net::IpAddr::V6((bits & mask).into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
#[test]
fn clients_are_counted_per_ipv6_network() {
    let k = |a: &str, p| client_key(a.parse().unwrap(), p).to_string();
    assert_eq!(k("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
    assert_eq!(k("2001:db8:1:2:bbbb::9", 64), "2001:db8:1:2::");
    assert_eq!(k("2001:db8:1:3::1", 64), "2001:db8:1:3::");
    assert_eq!(k("2001:db8:1:2::1", 128), "2001:db8:1:2::1");
    assert_eq!(k("2001:db8:ffff::1", 48), "2001:db8:ffff::");
    assert_eq!(k("::ffff:192.0.2.1", 64), "192.0.2.1");
    assert_eq!(k("192.0.2.1", 64), "192.0.2.1");
}
