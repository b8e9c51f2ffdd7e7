//! Delivery: the scheduler ([`scheduler`]) decides what is due and is the
//! only writer of envelope state; a fixed pool of delivery threads carries
//! out jobs, locally ([`local`], threads of its own) or over SMTP
//! ([`remote`], with TLS decided by [`tls_decision`]), and reports one
//! result per recipient back. Bounces are built in [`bounce`].
//!
//! Unknown failures are temporary: anything not clearly permanent defers.

pub mod bounce;
pub mod check;
pub mod local;
pub mod outcome;
pub mod remote;
mod reports;
pub mod scheduler;
pub mod tls_decision;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, Delivery, TlsPolicy};
use crate::dns::Resolver;
use crate::spool::Spool;
use crate::tls::client::ClientTls;

pub use outcome::{Disposition, Fault, PeerAuth, RcptOutcome, Relay, Status};

/// One message's part of a job.
#[derive(Clone, Debug)]
pub struct Item {
    /// Queue id.
    pub id: String,
    /// Envelope sender (empty for `<>`).
    pub from: String,
    /// Body size.
    pub size: u64,
    /// 8BITMIME body.
    pub eight_bit: bool,
    /// Arrival time, for `delay=`.
    pub arrival: u64,
    /// (index, address) of the recipients to try.
    pub rcpts: Vec<(usize, String)>,
    /// Body file.
    pub body: PathBuf,
    /// Sent with `MAIL FROM:<…> REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
}

/// Where a job goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Action name.
    pub action: String,
    /// Recipient domain (lower-cased) for MX relay; empty for maildir and
    /// smarthost routes.
    pub domain: String,
    /// REQUIRETLS or TLS-Required: No mail travels on routes of its own,
    /// so that every message of a job asks the same of TLS.
    pub tls: crate::spool::envelope::TlsRequired,
}

/// Work for a delivery thread: messages for one route.
#[derive(Clone, Debug)]
pub struct Job {
    /// Destination.
    pub route: Route,
    /// Messages.
    pub items: Vec<Item>,
}

/// How a delivery thread reports a job's outcomes: the route, the
/// outcomes, whether the destination refused every connection (so that
/// the scheduler lowers its concurrency instead of counting an attempt),
/// and whether the thread holds a connection it could use for another job
/// of the route; returns that next job, if the queue has one.
pub type Report<'a> = dyn FnMut(Route, Vec<Outcome>, bool, bool) -> Option<Job> + 'a;

/// What a delivery thread sends the scheduler after a job.
#[derive(Debug)]
pub struct Done {
    /// The job's route.
    pub route: Route,
    /// One per message.
    pub outcomes: Vec<Outcome>,
    /// The destination refused every connection (or greeted with 421).
    pub refused: bool,
    /// Where to send the next job for the route over the same connection
    /// (None: the thread has no connection to keep).
    pub more: Option<crossbeam_channel::Sender<Option<Job>>>,
}

/// A delivery thread's report.
#[derive(Debug)]
pub struct Outcome {
    /// Queue id.
    pub id: String,
    /// Results, one per recipient tried.
    pub results: Vec<RcptOutcome>,
}

/// Why DANE can never take effect, when a relay action asks for it but no
/// resolver's AD bit is believed (postern.conf(5), `resolver`).
pub fn dane_warning(cfg: &Config, resolver: &Resolver) -> Option<String> {
    let dane = cfg.actions.values().any(|a| match a {
        Delivery::Relay(r) => {
            r.tls.is_dane()
                || r.tls_policy
                    .as_ref()
                    .is_some_and(|t| t.by_domain.values().any(|p| p.is_dane()))
        }
        Delivery::Maildir { .. } => false,
    });
    (dane && !resolver.trusts_ad()).then(|| {
        format!(
            "DANE is configured (tls dane is the default for MX delivery) but no resolver is trusted to validate DNSSEC \
             ({}): DANE never applies and delivery is opportunistic TLS (may); run a local validating resolver such as \
             unbound and name it with 'resolver 127.0.0.1', or mark a validating one 'trust-ad' (postern.conf(5))",
            resolver.describe()
        )
    })
}

/// What delivery threads share: built once per configuration.
pub struct Context {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// DNS.
    pub resolver: Resolver,
    /// TLS client configs per relay action.
    pub tls: HashMap<String, ClientTls>,
    /// MTA-STS policies (RFC 8461), cached in the spool.
    pub sts: crate::sts::Cache,
    /// Where TLS results are recorded for reports (RFC 8460), with
    /// `tls-report`; shared by every configuration since start.
    pub tlsrpt: Option<Arc<crate::tlsrpt::Recorder>>,
    /// Our EHLO name.
    pub hostname: String,
    /// Where we listen, and the addresses of this host's interfaces (for
    /// wildcard listeners): delivering there would loop back to us.
    own: Vec<std::net::SocketAddr>,
    local_ips: Vec<std::net::IpAddr>,
}

impl Context {
    /// Build from the configuration and the addresses we listen on;
    /// errors name what failed.
    pub fn new(cfg: Arc<Config>, own: Vec<std::net::SocketAddr>) -> Result<Context, String> {
        let resolver = if cfg.resolvers.is_empty() {
            // Without a usable resolv.conf, remote mail defers (and says
            // why in its log line) while local delivery goes on.
            Resolver::from_system().unwrap_or_else(|e| {
                log::error!(
                    "DNS: {e}; remote deliveries will defer until it is fixed and postern reloaded"
                );
                Resolver::with_servers(Vec::new())
            })
        } else {
            Resolver::with_servers(cfg.resolvers.clone())
        };
        if let Some(w) = dane_warning(&cfg, &resolver) {
            log::warn!("{w}");
        }
        let mut tls = HashMap::new();
        let needs_tls = cfg
            .actions
            .values()
            .any(|a| matches!(a, Delivery::Relay { .. }));
        let roots = if needs_tls {
            crate::tls::client::system_roots()
        } else {
            rustls::RootCertStore::empty()
        };
        for (name, a) in &cfg.actions {
            let Delivery::Relay(a) = a else { continue };
            if a.auth.is_some() && a.tls == TlsPolicy::Encrypt {
                log::warn!(
                    "action {name}: 'auth' with 'tls encrypt': the relay's certificate is not verified, \
                     so anyone on the path can pose as it and collect the password; use 'tls verify' \
                     (with 'ca FILE' for a private CA) unless the path is trusted (postern.conf(5))"
                );
            }
            tls.insert(
                name.clone(),
                ClientTls::new(
                    roots.clone(),
                    a.ca.as_ref(),
                    a.pki
                        .as_ref()
                        .and_then(|p| cfg.pki.get(p))
                        .map(|p| p.key.clone()),
                )
                .map_err(|e| format!("action {name}: {e}"))?,
            );
        }
        let local_ips = nix::ifaddrs::getifaddrs()
            .map(|ifs| {
                ifs.filter_map(|i| {
                    let a = i.address?;
                    a.as_sockaddr_in()
                        .map(|v4| std::net::IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
                })
                .collect()
            })
            .unwrap_or_default();
        Ok(Context {
            hostname: cfg.hostname.clone(),
            sts: crate::sts::Cache::on_disk(cfg.queue.join("sts")),
            tlsrpt: None,
            cfg,
            resolver,
            tls,
            own,
            local_ips,
        })
    }

    /// The same, with an MTA-STS cache in memory only: for
    /// `posternctl tls-check`, which may run as root and must not touch
    /// the spool.
    pub fn without_spool(mut self) -> Context {
        self.sts = crate::sts::Cache::in_memory();
        self.tlsrpt = None;
        self
    }

    /// How HTTPS requests (MTA-STS policies, TLS reports) are made: with
    /// `tls`'s validating config (the system CA store and that action's
    /// `ca`), `mta-sts port` and the delivery deadlines.
    pub fn web(&self, tls: &ClientTls) -> crate::sts::Fetch {
        crate::sts::Fetch {
            tls: tls.verified.clone(),
            port: self.cfg.mta_sts_port,
            deadlines: crate::https::Deadlines {
                connect: self.cfg.limits.connect_timeout,
                total: self.cfg.limits.delivery_timeout,
            },
        }
    }

    /// [`Context::web`] for work that belongs to no action (refreshing
    /// cached MTA-STS policies, posting TLS reports): the first relay
    /// action's TLS settings.
    pub fn any_web(&self) -> Option<crate::sts::Fetch> {
        self.tls.values().next().map(|t| self.web(t))
    }

    /// Record TLS results with `rec` when the configuration says
    /// `tls-report`.
    fn with_reports(mut self, rec: &Arc<crate::tlsrpt::Recorder>) -> Context {
        if self.cfg.tls_report.is_some() {
            self.tlsrpt = Some(rec.clone());
        }
        self
    }

    /// Would a connection to `addr` reach one of our own listeners?
    /// (Postfix's "mail for D loops back to myself".)
    pub fn is_self(&self, addr: std::net::SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.own.iter().any(|o| {
            o.port() == addr.port()
                && (o.ip() == ip
                    || (o.ip().is_unspecified()
                        && (ip.is_loopback() || self.local_ips.contains(&ip))))
        })
    }

    /// Carry out one job (and, for relays, the next ones `report` hands
    /// out over the same connection), reporting each one's outcomes.
    pub fn run(&self, job: Job, report: &mut Report<'_>) {
        let outcomes = match self.cfg.actions.get(&job.route.action) {
            Some(Delivery::Maildir { path, alias, .. }) => {
                let alias = alias.as_ref().and_then(|t| self.cfg.tables.get(t));
                job.items
                    .iter()
                    .map(|item| local::deliver(item, path, alias))
                    .collect()
            }
            Some(Delivery::Relay(action)) => return remote::deliver(self, action, job, report),
            None => remote::fail_all(
                &job,
                &Fault::Config {
                    what: format!(
                        "no action named '{}' in the configuration",
                        job.route.action
                    ),
                },
            ),
        };
        report(job.route, outcomes, false, false);
    }
}

/// Where the scheduler hands out jobs: local (Maildir) deliveries have
/// threads of their own, so that no remote server, however slow, delays
/// them.
pub struct Lanes {
    /// Maildir jobs.
    pub local: crossbeam_channel::Sender<Job>,
    /// Relay jobs (and jobs for an action that no longer exists).
    pub remote: crossbeam_channel::Sender<Job>,
}

impl Lanes {
    fn lane(&self, cfg: &Config, route: &Route) -> &crossbeam_channel::Sender<Job> {
        match cfg.actions.get(&route.action) {
            Some(Delivery::Maildir { .. }) => &self.local,
            _ => &self.remote,
        }
    }

    /// Send `job` to its lane; false if that lane's threads are gone.
    pub fn send(&self, cfg: &Config, job: Job) -> bool {
        self.lane(cfg, &job.route).send(job).is_ok()
    }

    /// Jobs waiting for a thread in the lane `route` goes to.
    pub fn backlog(&self, cfg: &Config, route: &Route) -> usize {
        self.lane(cfg, route).len()
    }
}

/// What a reload swaps in on the delivery side: a new [`Context`]
/// (actions, tables, CA files, TLS policies, the resolver) for jobs that
/// start from then on, and the new configuration for the scheduler's
/// routing. Jobs already running finish with what they started with.
pub struct Reloader {
    current: Arc<std::sync::RwLock<Arc<Context>>>,
    /// TLS results outlive configurations.
    reports: Arc<crate::tlsrpt::Recorder>,
    sched: crossbeam_channel::Sender<Arc<Config>>,
    own: Vec<std::net::SocketAddr>,
}

impl Reloader {
    /// Build the delivery side of `cfg`; an error (a CA file that cannot
    /// be read, say) refuses the whole reload.
    pub fn prepare(&self, cfg: &Arc<Config>) -> Result<Arc<Context>, String> {
        Context::new(cfg.clone(), self.own.clone()).map(|c| Arc::new(c.with_reports(&self.reports)))
    }

    /// Swap in what [`Reloader::prepare`] built.
    pub fn commit(&self, ctx: Arc<Context>, cfg: Arc<Config>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ctx;
        let _ = self.sched.send(cfg);
    }
}

/// The running delivery side.
pub struct Started {
    /// Committed messages are announced here.
    pub notify: crossbeam_channel::Sender<crate::spool::envelope::Envelope>,
    /// For SIGHUP and `posternctl reload`.
    pub reloader: Reloader,
}

/// Start the scheduler and `limit delivery-workers` delivery threads for
/// each lane, local and remote.
pub fn start(
    cfg: Arc<Config>,
    spool: Spool,
    ctl: crossbeam_channel::Receiver<crate::control::Message>,
    own: Vec<std::net::SocketAddr>,
) -> Result<Started, String> {
    let reports = Arc::new(crate::tlsrpt::Recorder::new(cfg.queue.join("tlsrpt")));
    let current = Arc::new(std::sync::RwLock::new(Arc::new(
        Context::new(cfg.clone(), own.clone())?.with_reports(&reports),
    )));
    let (new_tx, new_rx) = crossbeam_channel::unbounded::<crate::spool::envelope::Envelope>();
    let (local_tx, local_rx) = crossbeam_channel::unbounded::<Job>();
    let (remote_tx, remote_rx) = crossbeam_channel::unbounded::<Job>();
    let (res_tx, res_rx) = crossbeam_channel::unbounded::<Done>();
    for (lane, job_rx) in [("local", local_rx), ("delivery", remote_rx)] {
        for i in 0..cfg.limits.delivery_workers {
            let (current, job_rx, res_tx) = (current.clone(), job_rx.clone(), res_tx.clone());
            std::thread::Builder::new()
                .name(format!("{lane}-{i}"))
                .spawn(move || {
                    for job in job_rx {
                        // The context as of this job's start (a reload
                        // swaps it for later jobs).
                        let ctx = current.read().unwrap_or_else(|p| p.into_inner()).clone();
                        let mut gone = false;
                        ctx.run(job, &mut |route, outcomes, refused, can_reuse| {
                            let (tx, rx) = crossbeam_channel::bounded(1);
                            let done = Done {
                                route,
                                outcomes,
                                refused,
                                more: can_reuse.then_some(tx),
                            };
                            if res_tx.send(done).is_err() {
                                gone = true;
                                return None;
                            }
                            // The scheduler answers with the route's next
                            // job, at once or (while it keeps the
                            // connection idle) when one comes; None closes
                            // the connection.
                            if can_reuse {
                                rx.recv().ok().flatten()
                            } else {
                                None
                            }
                        });
                        if gone {
                            return;
                        }
                    }
                })
                .map_err(|e| format!("cannot start delivery thread: {e}"))?;
        }
    }
    let lanes = Lanes {
        local: local_tx,
        remote: remote_tx,
    };
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    reports::spawn(
        current.clone(),
        reports.clone(),
        spool.clone().with_notify(new_tx.clone()),
        report_rx,
    )?;
    let mut sched = scheduler::Scheduler::new(cfg, spool, lanes)?.with_reports(report_tx);
    let (reload_tx, reload_rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || sched.run(new_rx, res_rx, ctl, reload_rx))
        .map_err(|e| format!("cannot start scheduler: {e}"))?;
    Ok(Started {
        notify: new_tx,
        reloader: Reloader {
            current,
            reports,
            sched: reload_tx,
            own,
        },
    })
}

/// The per-recipient log line (postern(8) LOGGING, after Postfix's log_adhoc).
pub fn log_result(item: &Item, addr: &str, r: &RcptOutcome) {
    let delay = crate::time::unix_now().saturating_sub(item.arrival);
    let tls = r.tls.as_ref().map_or("none".into(), ToString::to_string);
    let policy = r
        .level
        .map_or(String::new(), |l| format!(" policy={}", l.as_str()));
    let line = format!(
        "{}: to=<{addr}> relay={} delay={delay}s tls={tls} verified={}{policy} status={} ({})",
        item.id,
        r.relay,
        r.auth.as_str(),
        r.disposition.as_str(),
        r.status
    );
    match r.disposition {
        Disposition::Sent => {
            crate::stats::DELIVERED.inc();
            if let Relay::Host { .. } = r.relay {
                crate::stats::DELIVERED_REMOTE.inc();
                if r.tls.is_some() {
                    crate::stats::DELIVERED_TLS.inc();
                }
                match r.auth {
                    PeerAuth::Dane => crate::stats::DELIVERED_DANE.inc(),
                    PeerAuth::Sts => crate::stats::DELIVERED_STS.inc(),
                    PeerAuth::Ca => crate::stats::DELIVERED_CA.inc(),
                    PeerAuth::No => {}
                }
            }
            log::info!("{line}")
        }
        Disposition::Deferred => {
            crate::stats::DEFERRED.inc();
            log::warn!("{line}")
        }
        Disposition::Bounced => {
            crate::stats::BOUNCED.inc();
            log::warn!("{line}")
        }
    }
}
