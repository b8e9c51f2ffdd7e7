//! `metrics on ADDR port N`: the counters of [`crate::stats`] over HTTP,
//! `GET /metrics` in the Prometheus text format (version 0.0.4), from one
//! small thread. No TLS and no authentication: keep it on loopback or a
//! management network (postern.conf(5)).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::control::{Answer, Message, Request};

/// Serve on `listener` (bound before the privilege drop) for the life of
/// the process; the queue figures come from the scheduler over `sched`.
pub fn serve(listener: TcpListener, sched: Sender<Message>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                answer(conn, &sched);
            }
        })
        .map(|_| ())
        .map_err(|e| format!("metrics thread: {e}"))
}

fn queue(sched: &Sender<Message>) -> crate::stats::Queue {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let asked = sched.send(Message {
        req: Request::ShowStats,
        reply: tx,
    });
    match asked
        .ok()
        .and_then(|()| rx.recv_timeout(Duration::from_secs(5)).ok())
    {
        Some(Ok(Answer::Stats(q))) => q,
        _ => crate::stats::Queue::default(),
    }
}

fn answer(mut conn: TcpStream, sched: &Sender<Message>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let mut n = 0;
    // Bounded by the buffer and the read timeout.
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let line = head.lines().next().unwrap_or("");
    let (status, body) = match line.split(' ').collect::<Vec<_>>().as_slice() {
        ["GET", "/metrics", v] if v.starts_with("HTTP/1.") => {
            ("200 OK", crate::stats::prometheus(queue(sched)))
        }
        ["GET", _, _] => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("400 Bad Request", "GET /metrics only\n".to_string()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
}
