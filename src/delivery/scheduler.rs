//! The scheduler: one thread that owns the queue state in memory (rebuilt
//! from the spool at start, so `kill -9` loses nothing), decides what is
//! due, groups recipients by route into jobs, and writes every result back
//! to the envelope (write-new + rename) before acting on it.
//!
//! Newly committed mail is announced over a channel and dispatched at once;
//! deferred recipients wait for their retry time: 1m, 5m, 15m, 30m, 1h,
//! then hourly, until `bounce-after`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use super::bounce::{self, Failure};
use super::{Disposition, Done, Item, Job, Outcome, Relay, Route, Status};
use crate::config::{Config, Delivery};
use crate::control;
use crate::smtp::address::parse_mailbox;
use crate::spool::Spool;
use crate::spool::envelope::{EnvRcpt, Envelope, RcptState};

/// Longest a finished message's removal waits for its directory fsync.
const OWED_MAX: Duration = Duration::from_millis(100);

/// Messages per job: enough to reuse a connection, few enough that one
/// busy destination still spreads over several delivery threads.
const ITEMS_PER_JOB: usize = 20;

/// New messages taken from the announcement channel in one pass.
const NEW_BATCH: usize = 256;

/// How long announcements gather, unwatched, once one woke the scheduler.
const GATHER: Duration = Duration::from_millis(1);

/// How long a connection with nothing to send is kept open for new mail
/// to its destination (Postfix's smtp_connection_cache_time_limit).
const CONNECTION_IDLE: Duration = Duration::from_secs(2);

/// Seconds to wait after the n-th failed attempt, for a first retry of
/// `base` seconds (60 by default: 1m, 5m, 15m, 30m, 1h, then hourly).
pub fn backoff(attempts: u32, base: u64) -> u64 {
    let factor = match attempts {
        0 | 1 => 1,
        2 => 5,
        3 => 15,
        4 => 30,
        _ => 60,
    };
    base.max(1).saturating_mul(factor)
}

/// A delivery thread holding an open connection with nothing to send: the
/// channel it waits on for its next job, and until when it is kept.
type IdleConnection = (crossbeam_channel::Sender<Option<Job>>, std::time::Instant);

struct Entry {
    env: Envelope,
    /// Jobs out for this message; it is not dispatched again until 0.
    busy: usize,
}

/// The scheduler's state.
pub struct Scheduler {
    cfg: Arc<Config>,
    spool: Spool,
    jobs: super::Lanes,
    queue: BTreeMap<String, Entry>,
    /// Messages to look at in the next dispatch.
    dirty: Vec<String>,
    /// Earliest retry time among messages not in `dirty` (MAX: none).
    next_due: u64,
    /// Removals whose directory fsync is still to do.
    owed: crate::spool::Unsynced,
    /// When the oldest of them was made.
    owed_since: Option<std::time::Instant>,
    /// Jobs (connections) in flight per route: a domain's MX hosts, a
    /// smarthost, a Maildir action.
    active: HashMap<Route, usize>,
    /// The concurrency a route is held to now: `limit
    /// destination-concurrency`, lowered while its servers refuse more
    /// connections from us.
    concurrency: HashMap<Route, usize>,
    /// Messages held back while their route is at its concurrency; the
    /// route's open connections take them (see [`Scheduler::next_job`]).
    waiting: HashMap<Route, BTreeSet<String>>,
    /// Open connections with nothing to send, per route, and until when
    /// they are kept: new mail for the route goes over them. Only the
    /// scheduler closes one (by sending None), so no job is ever sent to a
    /// thread that stopped listening.
    idle: HashMap<Route, Vec<IdleConnection>>,
    /// Where `tls-report` requests go (the TLS report thread).
    reports: Option<crossbeam_channel::Sender<control::Message>>,
}

impl Scheduler {
    /// Load every committed message.
    pub fn new(cfg: Arc<Config>, spool: Spool, jobs: super::Lanes) -> Result<Scheduler, String> {
        let mut s = Scheduler {
            cfg,
            spool,
            jobs,
            queue: BTreeMap::new(),
            dirty: Vec::new(),
            // The first dispatch looks at the whole queue.
            next_due: 0,
            owed: Default::default(),
            owed_since: None,
            active: HashMap::new(),
            concurrency: HashMap::new(),
            waiting: HashMap::new(),
            idle: HashMap::new(),
            reports: None,
        };
        for id in s.spool.list().map_err(|e| format!("queue: {e}"))? {
            s.load(&id);
        }
        Ok(s)
    }

    /// Hand `tls-report` requests to `tx`.
    pub fn with_reports(mut self, tx: crossbeam_channel::Sender<control::Message>) -> Scheduler {
        self.reports = Some(tx);
        self
    }

    fn load(&mut self, id: &str) {
        if self.queue.contains_key(id) {
            return;
        }
        match self.spool.envelope(id) {
            // Finished before a crash or a failed removal: remove it now.
            Ok(env) if env.rcpts.iter().all(|r| r.state != RcptState::Pending) => {
                if let Err(e) = self.spool.remove(&[id]) {
                    log::error!("{id}: finished, but cannot be removed: {e}");
                }
            }
            Ok(env) => {
                self.queue.insert(id.to_string(), Entry { env, busy: 0 });
                self.dirty.push(id.to_string());
            }
            Err(e) => log::error!("{id}: cannot read envelope: {e}"),
        }
    }

    /// A message a session just committed.
    fn insert(&mut self, env: Envelope) {
        if !self.queue.contains_key(&env.id) {
            self.dirty.push(env.id.clone());
            self.queue.insert(env.id.clone(), Entry { env, busy: 0 });
        }
    }

    /// Run until the announcement channel closes.
    pub fn run(
        &mut self,
        new: Receiver<Envelope>,
        mut results: Receiver<Done>,
        mut ctl: Receiver<control::Message>,
        mut reloads: Receiver<Arc<Config>>,
    ) {
        log::info!("scheduler: {} messages in the queue", self.queue.len());
        let mut listen = new.clone();
        let mut gather = crossbeam_channel::never();
        loop {
            let now = crate::time::unix_now();
            let next = self.dispatch(now);
            // Wake for the next retry, but at least once a minute so a
            // changed clock cannot stall the queue.
            let mut wait = Duration::from_secs(
                next.map(|t| t.saturating_sub(now).clamp(1, 60))
                    .unwrap_or(60),
            );
            if self.owed.any() {
                wait = wait.min(Duration::from_millis(100));
            }
            if let Some(until) = self.close_idle() {
                wait = wait.min(until.saturating_duration_since(std::time::Instant::now()));
            }
            select! {
                recv(listen) -> env => match env {
                    Ok(env) => {
                        self.insert(env);
                        self.insert_waiting(&new);
                        // Sessions committed together by one flush announce
                        // together, but one after another as they get a
                        // core: each send that found this thread waiting in
                        // select! woke it (a futex call) per message. For
                        // GATHER the channel is not watched, so the rest of
                        // the batch waits in it without waking anyone, while
                        // results and control requests are served as ever.
                        listen = crossbeam_channel::never();
                        gather = crossbeam_channel::at(std::time::Instant::now() + GATHER);
                    }
                    Err(_) => return,
                },
                recv(gather) -> _ => {
                    self.insert_waiting(&new);
                    listen = new.clone();
                    gather = crossbeam_channel::never();
                },
                recv(results) -> r => match r {
                    Ok(done) => {
                        let finished = self.job_done(done);
                        self.remove(&finished);
                        // The owed directory fsyncs wait for a quiet moment
                        // (the default branch below, at most OWED_MAX away):
                        // delivery threads that hold a connection wait for
                        // this loop's answer, so it must not stop for them
                        // after every job. Under a steady stream of results
                        // they still happen within about 100 ms.
                        let overdue = self.owed_since.is_some_and(|t| t.elapsed() >= OWED_MAX);
                        if overdue {
                            self.sync_owed();
                        }
                    }
                    // No delivery threads (`limit delivery-workers 0`): a
                    // closed channel would otherwise wake select! forever.
                    Err(_) => results = crossbeam_channel::never(),
                },
                // A reload: routes, bounce-after and retry intervals come
                // from the new configuration from the next dispatch on,
                // which looks at the whole queue.
                recv(reloads) -> c => match c {
                    Ok(c) => {
                        self.cfg = c;
                        self.next_due = 0;
                    }
                    Err(_) => reloads = crossbeam_channel::never(),
                },
                recv(ctl) -> m => match m {
                    // TLS reports are built and sent on their own thread.
                    Ok(m @ control::Message { req: control::Request::TlsReport { .. }, .. }) => {
                        match &self.reports {
                            Some(tx) => {
                                if let Err(e) = tx.send(m) {
                                    let _ = e.0.reply.send(Err("the TLS report thread is not running".into()));
                                }
                            }
                            None => {
                                let _ = m.reply.send(Err("TLS reports are not enabled".into()));
                            }
                        }
                    }
                    Ok(m) => {
                        let answer = self.control(m.req);
                        let _ = m.reply.send(answer);
                    }
                    Err(_) => ctl = crossbeam_channel::never(),
                },
                default(wait) => self.sync_owed(),
            }
        }
    }

    /// Take the announcements waiting on `new`, at most NEW_BATCH, so
    /// results and control requests still get a turn.
    fn insert_waiting(&mut self, new: &Receiver<Envelope>) {
        for env in new.try_iter().take(NEW_BATCH) {
            self.insert(env);
        }
    }

    /// Hand out every due recipient; returns the earliest future retry.
    fn dispatch(&mut self, now: u64) -> Option<u64> {
        if self.cfg.limits.delivery_workers == 0 {
            // `limit delivery-workers 0`: the queue is held.
            return None;
        }
        // Only messages that changed are looked at, unless a retry time has
        // come: then the whole queue, once. Keeps a large deferred queue from
        // costing a full scan per new message.
        let ids: Vec<String> = if now >= self.next_due {
            self.dirty.clear();
            self.next_due = u64::MAX;
            self.queue.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.dirty)
        };
        let mut groups: BTreeMap<Route, Vec<Item>> = BTreeMap::new();
        for id in ids {
            let Some(e) = self.queue.get(&id) else {
                continue;
            };
            if e.busy > 0 {
                continue;
            }
            let mut per_route: BTreeMap<Route, Vec<(usize, String)>> = BTreeMap::new();
            for (idx, r) in e.env.rcpts.iter().enumerate() {
                if r.state != RcptState::Pending {
                    continue;
                }
                if r.next_try > now {
                    self.next_due = self.next_due.min(r.next_try);
                    continue;
                }
                per_route
                    .entry(route_of(&self.cfg, &e.env, r))
                    .or_default()
                    .push((idx, r.addr.clone()));
            }
            for (route, rcpts) in per_route {
                groups
                    .entry(route)
                    .or_default()
                    .push(item(&self.spool, &e.env, rcpts));
            }
        }
        for (route, items) in groups {
            let limit = self.concurrency_of(&route);
            for chunk in items.chunks(ITEMS_PER_JOB) {
                let job = Job {
                    route: route.clone(),
                    items: chunk.to_vec(),
                };
                // An open connection to the route takes it first.
                let Some(job) = self.give_to_idle(job) else {
                    continue;
                };
                let active = self.active.get(&route).copied().unwrap_or(0);
                if active >= limit {
                    // The route's open connections take these when they
                    // finish their job (next_job); none is opened for them.
                    let w = self.waiting.entry(route.clone()).or_default();
                    w.extend(chunk.iter().map(|i| i.id.clone()));
                    continue;
                }
                self.take(&job);
                if self.jobs.send(&self.cfg, job) {
                    self.active.insert(route.clone(), active + 1);
                } else {
                    log::error!("scheduler: delivery threads are gone");
                }
            }
        }
        (self.next_due != u64::MAX).then_some(self.next_due)
    }

    /// Hand `job` to an idle connection of its route; gives it back when
    /// there is none.
    fn give_to_idle(&mut self, job: Job) -> Option<Job> {
        let mut job = job;
        // Bounded by the idle connections of the route.
        while let Some((tx, _)) = self.idle.get_mut(&job.route).and_then(Vec::pop) {
            self.take(&job);
            match tx.send(Some(job)) {
                Ok(()) => return None,
                Err(crossbeam_channel::SendError(back)) => {
                    // The thread is gone; so is its slot.
                    let back = back?;
                    self.untake(&back);
                    self.close_slot(&back.route);
                    job = back;
                }
            }
        }
        Some(job)
    }

    /// Close the idle connections whose time is up; returns when the next
    /// one is due.
    fn close_idle(&mut self) -> Option<std::time::Instant> {
        let now = std::time::Instant::now();
        let mut next: Option<std::time::Instant> = None;
        let mut freed = Vec::new();
        for (route, conns) in self.idle.iter_mut() {
            conns.retain(|(tx, until)| {
                if *until > now {
                    next = Some(next.map_or(*until, |n| n.min(*until)));
                    return true;
                }
                let _ = tx.send(None);
                freed.push(route.clone());
                false
            });
        }
        for route in freed {
            self.close_slot(&route);
            self.wake_waiting(&route);
        }
        next
    }

    /// The messages of `job` are out: busy, and no longer waiting.
    fn take(&mut self, job: &Job) {
        for item in &job.items {
            if let Some(e) = self.queue.get_mut(&item.id) {
                e.busy += 1;
            }
            if let Some(w) = self.waiting.get_mut(&job.route) {
                w.remove(&item.id);
            }
        }
    }

    /// The messages of `job` never reached a thread: not busy for it.
    fn untake(&mut self, job: &Job) {
        for item in &job.items {
            if let Some(e) = self.queue.get_mut(&item.id) {
                e.busy = e.busy.saturating_sub(1);
            }
        }
    }

    /// One connection (job slot) of `route` fewer.
    fn close_slot(&mut self, route: &Route) {
        let a = self.active.get(route).copied().unwrap_or(1);
        self.active.insert(route.clone(), a.saturating_sub(1));
    }

    /// A slot of `route` is free: what waited for it is looked at again.
    fn wake_waiting(&mut self, route: &Route) {
        if let Some(w) = self.waiting.get(route) {
            self.dirty.extend(w.iter().cloned());
        }
    }

    fn concurrency_of(&self, route: &Route) -> usize {
        self.concurrency
            .get(route)
            .copied()
            .unwrap_or(self.cfg.limits.destination_concurrency)
            .max(1)
    }

    /// A delivery thread finished a job: record its results, and hand its
    /// connection the route's next messages, or close the job's slot.
    /// Returns the messages now finished.
    fn job_done(&mut self, done: Done) -> Vec<String> {
        let Done {
            route,
            outcomes,
            refused,
            more,
        } = done;
        let active = self.active.get(&route).copied().unwrap_or(1);
        let finished = if refused && active > 1 {
            // Its servers turn away one more connection while they serve
            // our others: a limit on us, not a failure of these messages.
            // Hold the route to what it takes, and let the open
            // connections carry these, without counting an attempt.
            let lower = (active - 1).max(1);
            if self.concurrency_of(&route) > lower {
                log::info!(
                    "{} {}: connection refused while {} others are open; holding it to {lower} connections",
                    route.action,
                    route.domain,
                    active - 1
                );
            }
            self.concurrency.insert(route.clone(), lower);
            for o in &outcomes {
                if let Some(e) = self.queue.get_mut(&o.id) {
                    e.busy = e.busy.saturating_sub(1);
                    self.waiting
                        .entry(route.clone())
                        .or_default()
                        .insert(o.id.clone());
                }
            }
            Vec::new()
        } else {
            if !refused && self.concurrency.contains_key(&route) {
                // Served well again: allow one more connection next time.
                let c = self.concurrency_of(&route) + 1;
                if c >= self.cfg.limits.destination_concurrency {
                    self.concurrency.remove(&route);
                } else {
                    self.concurrency.insert(route.clone(), c);
                }
            }
            outcomes.into_iter().filter_map(|o| self.apply(o)).collect()
        };
        let next = match &more {
            Some(_) if !refused => self.next_job(&route),
            _ => None,
        };
        match (more, next) {
            (Some(tx), Some(job)) => {
                if let Err(crossbeam_channel::SendError(Some(job))) = tx.send(Some(job)) {
                    // The thread is gone: the messages are free again.
                    self.release(&job);
                }
            }
            // Nothing for it now: kept open a moment for new mail, unless
            // jobs wait for a thread (the thread is worth more than the
            // connection then).
            (Some(tx), None) if !refused && self.jobs.backlog(&self.cfg, &route) == 0 => {
                self.idle
                    .entry(route)
                    .or_default()
                    .push((tx, std::time::Instant::now() + CONNECTION_IDLE));
            }
            (more, _) => {
                if let Some(tx) = more {
                    let _ = tx.send(None);
                }
                self.close_slot(&route);
                self.wake_waiting(&route);
            }
        }
        finished
    }

    /// The route's next due messages for a connection that is open already
    /// (Postfix's connection cache): up to a job's worth of those waiting.
    fn next_job(&mut self, route: &Route) -> Option<Job> {
        let now = crate::time::unix_now();
        let ids: Vec<String> = self.waiting.get(route)?.iter().cloned().collect();
        let mut items = Vec::new();
        for id in ids {
            if items.len() >= ITEMS_PER_JOB {
                break;
            }
            if let Some(w) = self.waiting.get_mut(route) {
                w.remove(&id);
            }
            let Some(e) = self.queue.get_mut(&id) else {
                continue;
            };
            let rcpts: Vec<(usize, String)> = e
                .env
                .rcpts
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.state == RcptState::Pending
                        && r.next_try <= now
                        && route_of(&self.cfg, &e.env, r) == *route
                })
                .map(|(i, r)| (i, r.addr.clone()))
                .collect();
            if rcpts.is_empty() {
                continue;
            }
            e.busy += 1;
            items.push(item(&self.spool, &e.env, rcpts));
        }
        (!items.is_empty()).then(|| Job {
            route: route.clone(),
            items,
        })
    }

    /// Undo a job that never reached a thread.
    fn release(&mut self, job: &Job) {
        self.untake(job);
        self.dirty.extend(job.items.iter().map(|i| i.id.clone()));
        self.close_slot(&job.route);
    }

    /// Remove finished messages from disk, then from memory.
    fn remove(&mut self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // The directory fsyncs are owed until the results channel is drained
        // (see run): one per bucket per burst, not per job. A crash before
        // them can bring a finished message back, which delivers it again:
        // the same window as a crash between a remote 250 and its record.
        if self.owed_since.is_none() {
            self.owed_since = Some(std::time::Instant::now());
        }
        match self.spool.unlink(&refs, &mut self.owed) {
            Ok(()) => {
                for id in ids {
                    log::info!("{id}: removed");
                    self.queue.remove(id);
                }
            }
            Err(err) => {
                // Keep them in memory as done, and record that on disk so a
                // restart does not send them again.
                log::error!("cannot remove finished messages: {err}");
                for id in ids {
                    if let Some(e) = self.queue.get(id)
                        && let Err(err) = self.spool.update(&e.env)
                    {
                        log::error!("{id}: cannot record it as finished either: {err}");
                    }
                }
            }
        }
    }

    fn sync_owed(&mut self) {
        self.owed_since = None;
        if let Err(err) = self.spool.sync_owed(&mut self.owed) {
            log::error!("spool: {err}");
        }
    }

    /// Record one message's results; returns its id when it is finished.
    fn apply(&mut self, o: Outcome) -> Option<String> {
        let now = crate::time::unix_now();
        let bounce_after = self.cfg.bounce_after.as_secs();
        let retry = self.cfg.limits.retry_interval.as_secs();
        let e = self.queue.get_mut(&o.id)?;
        e.busy = e.busy.saturating_sub(1);
        let mut failures: Vec<(String, Status, Relay)> = Vec::new();
        for r in o.results {
            let Some(rc) = e.env.rcpts.get_mut(r.idx) else {
                continue;
            };
            rc.error = r.status.to_string();
            match r.disposition {
                Disposition::Sent => rc.state = RcptState::Sent,
                Disposition::Bounced => {
                    rc.state = RcptState::Bounced;
                    failures.push((rc.addr.clone(), r.status, r.relay));
                }
                Disposition::Deferred => {
                    rc.attempts += 1;
                    if now.saturating_sub(e.env.arrival) >= bounce_after {
                        rc.state = RcptState::Bounced;
                        let status = r
                            .status
                            .with_note(&format!(" (gave up after {} attempts)", rc.attempts));
                        log::warn!(
                            "{}: to=<{}> status=bounced (expired: {status})",
                            o.id,
                            rc.addr
                        );
                        failures.push((rc.addr.clone(), status, r.relay));
                    } else {
                        rc.next_try = now + backoff(rc.attempts, retry);
                    }
                }
            }
        }
        if !failures.is_empty() && !e.env.from.is_empty() {
            let env = e.env.clone();
            if let Err(why) = self.send_bounce(&env, &failures) {
                // The bounce could not be queued: keep the recipients for a
                // later try rather than lose the notification.
                log::error!("{}: cannot queue the bounce ({why}); will retry", o.id);
                if let Some(e) = self.queue.get_mut(&o.id) {
                    for (addr, _, _) in &failures {
                        for rc in e.env.rcpts.iter_mut().filter(|rc| &rc.addr == addr) {
                            rc.state = RcptState::Pending;
                            rc.next_try = now + retry.max(1);
                        }
                    }
                }
            }
        } else if !failures.is_empty() {
            log::info!("{}: not bouncing a message from <>", o.id);
        }
        let e = self.queue.get(&o.id)?;
        let done = e.env.rcpts.iter().all(|r| r.state != RcptState::Pending);
        if done && e.busy == 0 {
            return Some(o.id);
        }
        self.dirty.push(o.id.clone());
        if let Err(err) = self.spool.update(&e.env) {
            // XXX: the in-memory state is ahead of the disk now; after a
            // crash the sent recipients of this message would be tried again.
            log::error!("{}: cannot write envelope state: {err}", o.id);
        }
        None
    }

    fn send_bounce(
        &mut self,
        env: &Envelope,
        failures: &[(String, Status, Relay)],
    ) -> Result<(), String> {
        let list: Vec<Failure> = failures
            .iter()
            .map(|(rcpt, status, relay)| Failure {
                rcpt,
                status,
                relay,
            })
            .collect();
        let text = bounce::build(
            &self.cfg.hostname,
            &env.id,
            &env.from,
            env.arrival,
            &list,
            &self.spool.body_path(&env.id),
        );
        let action = parse_mailbox(&env.from)
            .ok_or_else(|| format!("sender <{}> cannot be parsed", env.from))
            .and_then(|m| {
                crate::rules::route(&self.cfg, crate::rules::Origin::MailSystem, &m)
                    .map_err(|r| format!("no rule routes a bounce to <{}>: {r}", env.from))
            });
        let action = match action {
            Ok(a) => a,
            Err(why) => {
                log::error!("{}: bounce dropped: {why}", env.id);
                return Ok(());
            }
        };
        let mut bounce_env = bounce::envelope(&self.cfg.hostname, &env.from, action);
        let id = self
            .spool
            .submit(&text, &mut bounce_env)
            .map_err(|e| e.to_string())?;
        log::info!("{}: bounce {id} queued to <{}>", env.id, env.from);
        self.dirty.push(id.clone());
        self.queue.insert(
            id,
            Entry {
                env: bounce_env,
                busy: 0,
            },
        );
        Ok(())
    }

    /// Answer a posternctl request with data (control formats it).
    fn control(&mut self, req: control::Request) -> Result<control::Answer, String> {
        use control::{Answer, QueueRow, Request};
        let now = crate::time::unix_now();
        Ok(match req {
            Request::ShowQueue => Answer::Queue(
                self.queue
                    .iter()
                    .flat_map(|(id, e)| {
                        e.env.rcpts.iter().map(move |r| QueueRow {
                            id: id.clone(),
                            age: now.saturating_sub(e.env.arrival),
                            from: e.env.from.clone(),
                            rcpt: r.addr.clone(),
                            state: match (r.state, e.busy > 0) {
                                (RcptState::Pending, true) => "active",
                                (RcptState::Pending, false) if r.next_try > now => "deferred",
                                (RcptState::Pending, false) => "queued",
                                (RcptState::Sent, _) => "sent",
                                (RcptState::Bounced, _) => "bounced",
                            },
                            attempts: r.attempts,
                            error: r.error.clone(),
                        })
                    })
                    .collect(),
            ),
            Request::ShowStats => Answer::Stats(crate::stats::Queue {
                messages: self.queue.len(),
                oldest: self
                    .queue
                    .values()
                    .map(|e| now.saturating_sub(e.env.arrival))
                    .max()
                    .unwrap_or(0),
            }),
            // What the daemon holds, read as its own user: posternctl runs
            // as root and does not open files in the postern user's spool.
            Request::ShowMessage(id) => {
                let Some(e) = self.queue.get(&id) else {
                    return Err(format!("no message {id} in the queue"));
                };
                Answer::Message {
                    envelope: e.env.to_text(),
                    path: self.spool.body_path(&id),
                }
            }
            Request::Schedule(which) => {
                let ids = self.select(&which)?;
                for id in &ids {
                    if let Some(e) = self.queue.get_mut(id) {
                        for r in e
                            .env
                            .rcpts
                            .iter_mut()
                            .filter(|r| r.state == RcptState::Pending)
                        {
                            r.next_try = 0;
                        }
                    }
                }
                self.dirty.extend(ids.iter().cloned());
                Answer::Scheduled(ids.len())
            }
            Request::Remove(which) => {
                let ids = self.select(&which)?;
                self.remove(&ids);
                for id in &ids {
                    log::info!("{id}: removed by posternctl");
                }
                Answer::Removed(ids.len())
            }
            Request::TlsReport { .. } => return Err("TLS reports are not enabled".into()),
        })
    }

    fn select(&self, which: &str) -> Result<Vec<String>, String> {
        if which == "all" {
            Ok(self.queue.keys().cloned().collect())
        } else if self.queue.contains_key(which) {
            Ok(vec![which.to_string()])
        } else {
            Err(format!("no message {which} in the queue"))
        }
    }
}

/// A message's part of a job: these recipients of `env`.
fn item(spool: &Spool, env: &Envelope, rcpts: Vec<(usize, String)>) -> Item {
    Item {
        id: env.id.clone(),
        from: env.from.clone(),
        size: env.size,
        eight_bit: env.eight_bit,
        arrival: env.arrival,
        rcpts,
        body: spool.body_path(&env.id),
        requiretls: env.tls_required == crate::spool::envelope::TlsRequired::Require,
    }
}

/// The route of a recipient: MX relay routes are per domain.
fn route_of(cfg: &Config, env: &Envelope, r: &EnvRcpt) -> Route {
    let relay = match cfg.actions.get(&r.action) {
        Some(Delivery::Relay(a)) => Some(a),
        _ => None,
    };
    let domain = match relay {
        Some(a) if a.host.is_none() => r
            .addr
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default(),
        _ => String::new(),
    };
    Route {
        action: r.action.clone(),
        domain,
        // Local delivery is final: what TLS the sender asked for is moot.
        tls: if relay.is_some() {
            env.tls_required
        } else {
            crate::spool::envelope::TlsRequired::Policy
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_schedule() {
        let s: Vec<u64> = (1..=7).map(|n| backoff(n, 60)).collect();
        assert_eq!(s, [60, 300, 900, 1800, 3600, 3600, 3600]);
        assert_eq!(backoff(2, 1), 5);
        assert_eq!(backoff(1, 0), 1);
    }
}
