//! The thread that sends TLS reports (RFC 8460 §5): once a day, at a
//! random time in the first four hours after UTC midnight (so that the
//! reports of many senders do not all arrive at once), the previous days'
//! results; and everything recorded so far when `posternctl tls-report
//! send` asks. Mailed reports are queued like bounces; HTTPS reports are
//! posted from this thread.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use super::Context;
use crate::control::{Answer, Message, Request};
use crate::dns::Lookup;
use crate::spool::Spool;
use crate::tlsrpt::{self, Recorder, Rua};

/// Start the thread; `rx` brings `tls-report` requests.
pub fn spawn(
    current: Arc<RwLock<Arc<Context>>>,
    rec: Arc<Recorder>,
    spool: Spool,
    rx: Receiver<Message>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("tls-reports".into())
        .spawn(move || {
            let mut next = next_run(crate::time::unix_now());
            // Runs for the life of the process: one pass per request or
            // per day.
            loop {
                let now = crate::time::unix_now();
                let wait = Duration::from_secs(next.saturating_sub(now).max(1));
                let ctx = || current.read().unwrap_or_else(|p| p.into_inner()).clone();
                select! {
                    recv(rx) -> m => match m {
                        Ok(m) => {
                            let answer = match m.req {
                                Request::TlsReport { send: false } => {
                                    Ok(Answer::Text(tlsrpt::summary(&rec.pending())))
                                }
                                Request::TlsReport { send: true } => {
                                    send(&ctx(), &rec, &spool, false).map(Answer::Text)
                                }
                                _ => Err("not a tls-report request".into()),
                            };
                            let _ = m.reply.send(answer);
                        }
                        Err(_) => return,
                    },
                    default(wait) => {
                        if crate::time::unix_now() >= next {
                            let c = ctx();
                            refresh_sts(&c);
                            if c.cfg.tls_report.is_some() {
                                match send(&c, &rec, &spool, true) {
                                    Ok(done) => log::info!("TLS reports: {}", done.trim_end().replace('\n', "; ")),
                                    Err(e) => log::warn!("TLS reports: {e}"),
                                }
                            }
                            next = next_run(crate::time::unix_now());
                        }
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the TLS report thread: {e}"))
}

/// Fetch again the cached MTA-STS policies that are due (RFC 8461 §3.3:
/// "proactively refresh cached policies before they expire"), so that a
/// domain that gets mail rarely keeps its policy.
fn refresh_sts(ctx: &Context) {
    let Some(web) = ctx.any_web() else {
        return;
    };
    for domain in ctx.sts.cached_domains() {
        ctx.sts
            .policy(&ctx.resolver, &web, &domain, crate::time::unix_now());
    }
}

/// The next daily run: after the coming UTC midnight, 0 to 4 hours later.
fn next_run(now: u64) -> u64 {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    (now / 86400 + 1) * 86400 + u64::from(u16::from_ne_bytes(b)) % (4 * 3600)
}

/// Build and send the reports for what was recorded: every day before
/// today when `daily` (today's results go back for tomorrow), everything
/// otherwise. Returns what was done, one line per report.
fn send(ctx: &Context, rec: &Recorder, spool: &Spool, daily: bool) -> Result<String, String> {
    let cfg = ctx
        .cfg
        .tls_report
        .as_ref()
        .ok_or("no 'tls-report' in the configuration")?;
    let now = crate::time::unix_now();
    let Some((lines, taken)) = rec.take().map_err(|e| format!("TLS report data: {e}"))? else {
        return Ok("nothing to report\n".into());
    };
    let lines = if daily {
        let today = now / 86400;
        let (old, new): (Vec<&str>, Vec<&str>) = lines.lines().partition(|l| {
            l.split('\t')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .is_none_or(|t| t / 86400 < today)
        });
        rec.put_back(&new);
        old.join("\n")
    } else {
        lines
    };
    let who = tlsrpt::Reporter {
        org: if cfg.org.is_empty() {
            ctx.cfg.hostname.clone()
        } else {
            cfg.org.clone()
        },
        contact: cfg.from.clone(),
        submitter: ctx.cfg.hostname.clone(),
    };
    let mut done = String::new();
    for r in tlsrpt::build(&lines, &who, now) {
        let rua = match ctx.resolver.txt(&format!("_smtp._tls.{}", r.domain)) {
            Ok((Lookup::Found(records), _)) => tlsrpt::parse_txt(&records),
            Ok((Lookup::NxDomain, _)) => Err("no _smtp._tls record".into()),
            Err(e) => Err(e.to_string()),
        };
        let rua = match rua {
            Ok(r) => r,
            Err(e) => {
                done.push_str(&format!("{}: report {} dropped: {e}\n", r.domain, r.id));
                continue;
            }
        };
        for dest in rua {
            let line = match &dest {
                Rua::Mailto(to) => mail(ctx, spool, &r, &who, to, cfg, now)
                    .map(|id| format!("{}: report {} queued as {id} to <{to}>", r.domain, r.id)),
                Rua::Https(url) => post(ctx, &r, url)
                    .map(|()| format!("{}: report {} posted to {url}", r.domain, r.id)),
            };
            match line {
                Ok(l) => done.push_str(&format!("{l}\n")),
                Err(e) => done.push_str(&format!("{}: report {} not sent: {e}\n", r.domain, r.id)),
            }
        }
    }
    let _ = std::fs::remove_file(&taken);
    Ok(done)
}

/// Queue a mailed report, routed as the mail system's own mail.
fn mail(
    ctx: &Context,
    spool: &Spool,
    r: &tlsrpt::Report,
    who: &tlsrpt::Reporter,
    to: &str,
    cfg: &crate::config::TlsReport,
    now: u64,
) -> Result<String, String> {
    let body = tlsrpt::message(r, who, to, &cfg.signer, now)?;
    let rcpt =
        crate::smtp::address::parse_mailbox(to).ok_or_else(|| format!("bad address <{to}>"))?;
    let action = crate::rules::route(&ctx.cfg, crate::rules::Origin::MailSystem, &rcpt)
        .map_err(|reply| format!("no rule routes mail to <{to}>: {reply}"))?;
    let mut env = super::bounce::envelope(&ctx.cfg.hostname, to, action);
    env.from = cfg.from.clone();
    // RFC 8460 §5.3.1: a report must get through where the destination's
    // TLS fails (the message says TLS-Required: No as well).
    env.tls_required = crate::spool::envelope::TlsRequired::Optional;
    spool.submit(&body, &mut env).map_err(|e| e.to_string())
}

/// POST a report (RFC 8460 §5.4), validated as MTA-STS fetches are.
fn post(ctx: &Context, r: &tlsrpt::Report, url: &str) -> Result<(), String> {
    let web = ctx
        .any_web()
        .ok_or("no relay action to take TLS settings from")?;
    let gz = tlsrpt::gzip(r.json.as_bytes());
    let resp = crate::https::post(
        &ctx.resolver,
        web.tls,
        url,
        "application/tlsrpt+gzip",
        &gz,
        4096,
        web.deadlines,
    )?;
    if (200..300).contains(&resp.status) {
        Ok(())
    } else {
        Err(format!("HTTP status {}", resp.status))
    }
}

#[cfg(test)]
mod tests {
    use super::next_run;

    #[test]
    fn daily_runs_fall_in_the_four_hours_after_midnight() {
        for now in [0, 86399, 86400, 1_796_111_693] {
            let t = next_run(now);
            let midnight = (now / 86400 + 1) * 86400;
            assert!((midnight..midnight + 4 * 3600).contains(&t), "{now} → {t}");
        }
    }
}
