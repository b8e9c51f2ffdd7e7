//! Sockets: the mio acceptor ([`listener`]), the session driver
//! ([`driver`]) and the plain/TLS transport ([`stream`]).

pub mod driver;
pub mod listener;
pub mod stream;

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
}

impl Endpoint {
    /// Build the endpoint for `l`.
    pub fn build(cfg: &Arc<Config>, l: &Listener) -> Result<Endpoint, String> {
        let tls = match &l.pki {
            Some(name) if l.tls != TlsMode::Off => {
                let pki = cfg
                    .pki
                    .get(name)
                    .ok_or_else(|| format!("no pki named '{name}'"))?;
                Some(
                    crate::tls::server::config(pki, cfg.pki.values())
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
            },
            policy: Arc::new(ListenerPolicy::new(cfg.clone(), l.auth.clone())),
            cfg: cfg.clone(),
            listener: l.clone(),
            tls,
        })
    }
}
