//! The acceptor: one thread, one `mio::Poll` over every listening socket,
//! the signals and a [`mio::Waker`]; and the fixed pool of session threads
//! it feeds over a bounded crossbeam channel.
//!
//! The acceptor never reads a client byte. It applies `limit sessions` and
//! `limit sessions-per-ip`, and when a limit is reached or the pool and its
//! queue are full it answers `421 4.3.2` itself and closes, so a flood costs
//! one write per connection and never a thread.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::Endpoint;
use crate::config::Config;
use crate::smtp::reply;
use crate::spool::Spool;

const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Stack of a session thread.
const SESSION_STACK: usize = 512 * 1024;

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Counts {
    /// Count one more session for `ip` unless it is at `limit` (and not
    /// exempt); false when it is.
    fn take_ip(&mut self, ip: IpAddr, limit: usize, exempt: bool) -> bool {
        let n = self.per_ip.get(&ip).copied().unwrap_or(0);
        if n >= limit && !exempt {
            return false;
        }
        *self.per_ip.entry(ip).or_insert(0) += 1;
        true
    }
}

/// A session's place in the connection counts; released on drop, whichever
/// way the session ends.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    /// The client key counted per address: the peer's, or for a `proxy`
    /// listener the proxied client's, once its header was read.
    ip: Option<IpAddr>,
}

impl Slot {
    /// Count the session under `ip` (the client behind a proxy) unless
    /// that address is at `limit sessions-per-ip`; false when it is.
    pub fn claim(&mut self, ip: IpAddr, limit: usize, exempt: bool) -> bool {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !c.take_ip(ip, limit, exempt) {
            return false;
        }
        self.ip = Some(ip);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = c.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

struct Job {
    stream: TcpStream,
    peer: SocketAddr,
    ep: Arc<Endpoint>,
    slot: Slot,
}

/// Bind every configured listener (before any privilege drop).
pub fn bind(cfg: &Config) -> Result<Vec<std::net::TcpListener>, String> {
    cfg.listeners
        .iter()
        .map(|l| {
            let sock = || -> io::Result<std::net::TcpListener> {
                let domain = socket2::Domain::for_address(l.addr);
                let s = socket2::Socket::new(
                    domain,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                // `listen on ::` and `listen on 0.0.0.0` on the same port
                // must both work, as in OpenSMTPD.
                if l.addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.set_reuse_address(true)?;
                s.bind(&l.addr.into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                Ok(s.into())
            };
            sock().map_err(|e| {
                format!(
                    "{}:{}: cannot listen on {}: {e}",
                    cfg.file.display(),
                    l.line,
                    l.addr
                )
            })
        })
        .collect()
}

/// The running acceptor.
pub struct Server {
    poll: Poll,
    listeners: Vec<TcpListener>,
    endpoints: Vec<Arc<Endpoint>>,
    cfg: Arc<Config>,
    config_path: Option<PathBuf>,
    spool: Arc<Spool>,
    counts: Arc<Mutex<Counts>>,
    waker: Arc<Waker>,
    /// The delivery side a reload rebuilds too.
    delivery: Option<crate::delivery::Reloader>,
}

impl Server {
    /// Set up the acceptor over already-bound sockets.
    pub fn new(
        cfg: Arc<Config>,
        config_path: Option<PathBuf>,
        bound: Vec<std::net::TcpListener>,
        spool: Arc<Spool>,
    ) -> Result<Server, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(|e| format!("cannot create waker: {e}"))?,
        );
        let endpoints = cfg
            .listeners
            .iter()
            .map(|l| Endpoint::build(&cfg, l).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut listeners = Vec::new();
        for (i, l) in bound.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)
                .map_err(|e| format!("cannot register listener: {e}"))?;
            listeners.push(l);
        }
        Ok(Server {
            poll,
            listeners,
            endpoints,
            cfg,
            config_path,
            spool,
            counts: Arc::default(),
            waker,
            delivery: None,
        })
    }

    /// Let a reload rebuild the delivery side as well.
    pub fn with_delivery(mut self, d: crate::delivery::Reloader) -> Server {
        self.delivery = Some(d);
        self
    }

    /// A handle that wakes the loop from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accept until SIGTERM/SIGINT, then let sessions finish (bounded by
    /// `limit shutdown-timeout`) and return.
    /// `early_stop` is set by a SIGTERM that came before the loop started.
    pub fn run(
        mut self,
        reloads: crossbeam_channel::Receiver<crossbeam_channel::Sender<String>>,
        early_stop: &std::sync::atomic::AtomicBool,
    ) -> io::Result<()> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let workers = self.cfg.limits.workers;
        let (tx, rx) = crossbeam_channel::bounded::<Job>(workers);
        let mut pool = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = rx.clone();
            let spool = self.spool.clone();
            let h = std::thread::Builder::new()
                .name(format!("session-{i}"))
                // A session needs little stack; 500 idle threads then cost
                // address space, not memory.
                .stack_size(SESSION_STACK)
                .spawn(move || {
                    for mut job in rx {
                        super::driver::run(job.stream, job.peer, &job.ep, &spool, &mut job.slot);
                    }
                })?;
            pool.push(h);
        }
        drop(rx);
        log::info!(
            "postern started: listening on {} with {workers} session workers",
            self.local_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut events = Events::with_capacity(256);
        let mut stopping = early_stop.load(std::sync::atomic::Ordering::SeqCst);
        while !stopping {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => {
                        for sig in signals.pending() {
                            match sig {
                                SIGHUP => {
                                    let _ = self.reload();
                                }
                                _ => {
                                    log::info!(
                                        "postern stopping on signal {sig}: no new connections"
                                    );
                                    stopping = true;
                                }
                            }
                        }
                    }
                    WAKER => {
                        // posternctl reload: answer with the outcome.
                        while let Ok(reply) = reloads.try_recv() {
                            let answer = match self.reload() {
                                Ok(msg) => format!("ok\n{msg}\n"),
                                Err(e) => format!("error: {e}\n"),
                            };
                            let _ = reply.send(answer);
                        }
                    }
                    Token(i) if i < self.listeners.len() => self.accept(i, &tx),
                    _ => {}
                }
            }
        }
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        drop(tx);
        self.drain(pool);
        Ok(())
    }

    fn drain(&self, pool: Vec<std::thread::JoinHandle<()>>) {
        let deadline = Instant::now() + self.cfg.limits.shutdown_timeout;
        // Bounded by the deadline; sessions still running then are cut off,
        // and their unacknowledged messages are purged at the next start.
        while Instant::now() < deadline {
            let active = self.counts.lock().map(|c| c.total).unwrap_or(0);
            if active == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = self.counts.lock().map(|c| c.total).unwrap_or(0);
        if left > 0 {
            log::warn!(
                "postern stopped with {left} sessions still open after the shutdown timeout"
            );
        } else {
            for h in pool {
                let _ = h.join();
            }
            log::info!("postern stopped");
        }
    }

    fn accept(&mut self, i: usize, tx: &crossbeam_channel::Sender<Job>) {
        let lim = &self.cfg.limits;
        // Drain readiness: mio reports an edge, so accept until WouldBlock.
        loop {
            let (mut stream, peer) = match self.listeners[i].accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next event.
                    log::error!("accept on {}: {e}", self.endpoints[i].listener.addr);
                    return;
                }
            };
            let ip = super::client_key(peer.ip(), lim.ipv6_prefix);
            // Behind a proxy the peer is the load balancer: the session
            // is counted per address once its header names the client.
            let proxied = self.endpoints[i].listener.proxy.is_some();
            let refused = {
                let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
                if c.total >= lim.sessions {
                    Some("sessions")
                } else if !proxied
                    && !c.take_ip(
                        ip,
                        lim.sessions_per_ip,
                        crate::rules::per_ip_exempt(&self.cfg, peer.ip()),
                    )
                {
                    Some("sessions-per-ip")
                } else {
                    c.total += 1;
                    None
                }
            };
            if let Some(which) = refused {
                crate::stats::SESSIONS_REFUSED.inc();
                log::warn!("smtp refused address={peer} reason=limit-{which}");
                busy(&mut stream);
                continue;
            }
            let slot = Slot {
                counts: self.counts.clone(),
                ip: (!proxied).then_some(ip),
            };
            let std_stream: TcpStream = stream.into();
            if let Err(e) = std_stream.set_nonblocking(false) {
                log::warn!("smtp refused address={peer} reason=socket error=\"{e}\"");
                continue;
            }
            let job = Job {
                stream: std_stream,
                peer,
                ep: self.endpoints[i].clone(),
                slot,
            };
            match tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    crate::stats::SESSIONS_REFUSED.inc();
                    log::warn!("smtp refused address={peer} reason=workers-busy");
                    let mut s = job.stream;
                    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                    busy(&mut s);
                }
            }
        }
    }

    /// SIGHUP: re-read the configuration, certificates and tables. New
    /// sessions use them; sessions in flight keep what they started with.
    /// A bad file is refused and the running configuration kept.
    fn reload(&mut self) -> Result<String, String> {
        let r = self.try_reload();
        match &r {
            Ok(msg) => log::info!("{msg}"),
            Err(e) => log::error!("{e}"),
        }
        r
    }

    fn try_reload(&mut self) -> Result<String, String> {
        let Some(path) = self.config_path.clone() else {
            return Err("reload: postern was started without a configuration file".into());
        };
        let refused = |e: String| format!("reload refused, keeping the running configuration: {e}");
        let cfg = Arc::new(Config::load(&path).map_err(|e| refused(e.to_string()))?);
        let restart = needs_restart(&self.cfg, &cfg);
        if !restart.is_empty() {
            return Err(refused(format!(
                "{} changed; restart postern to change {}",
                restart.join(", "),
                if restart.len() == 1 { "it" } else { "them" }
            )));
        }
        let eps = cfg
            .listeners
            .iter()
            .map(|l| Endpoint::build(&cfg, l).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(refused)?;
        let delivery = match &self.delivery {
            Some(d) => Some(d.prepare(&cfg).map_err(refused)?),
            None => None,
        };
        // Everything is built: swap it all in at once.
        self.endpoints = eps;
        self.cfg = cfg.clone();
        if let (Some(d), Some(ctx)) = (&self.delivery, delivery) {
            d.commit(ctx, cfg);
        }
        Ok(format!(
            "reload: configuration, certificates, tables and delivery (actions, CA files, TLS policies, resolver) re-read from {}",
            path.display()
        ))
    }
}

/// What a reload cannot change, as `postern.conf` names it: what is bound,
/// opened or started once (listening sockets, the spool, the user, thread
/// pools, the log).
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.limits, &new.limits);
    [
        (
            old.listeners.len() != new.listeners.len()
                || old
                    .listeners
                    .iter()
                    .zip(&new.listeners)
                    .any(|(a, b)| a.addr != b.addr),
            "listen on addresses",
        ),
        (old.queue != new.queue, "queue"),
        (old.user != new.user, "user"),
        (old.log != new.log, "log"),
        (o.workers != n.workers, "limit workers"),
        (
            o.delivery_workers != n.delivery_workers,
            "limit delivery-workers",
        ),
        (o.spare_files != n.spare_files, "limit spare-files"),
        (o.queue_sync != n.queue_sync, "limit queue-sync"),
        (
            o.queue_minfree() != n.queue_minfree(),
            "limit queue-minfree",
        ),
    ]
    .into_iter()
    .filter_map(|(changed, what)| changed.then_some(what))
    .collect()
}

/// 421 from the acceptor itself, without blocking it (a non-blocking or
/// short-timeout socket).
fn busy(stream: &mut impl Write) {
    refuse(stream, &reply::BUSY);
}

/// A one-line refusal before any session, in one write: a fresh socket's
/// send buffer always has room for one line; if it does not, the client is
/// not reading and loses nothing by missing it.
pub(super) fn refuse(stream: &mut impl Write, r: &reply::Reply) {
    let mut out = Vec::new();
    r.write_to(&mut out);
    let _ = stream.write(&out);
}
