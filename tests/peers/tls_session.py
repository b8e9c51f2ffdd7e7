"""How a TLS 1.3 session with postern looks to an OpenSSL client (Python's
ssl module), whose cipher order puts AES-256-GCM first.

usage:
  tls_session.py PORT
      two STARTTLS sessions: EHLO, STARTTLS, handshake, then wait a second
      before the second EHLO; the second session offers the first one's
      ticket.

Prints one line:
  before-ehlo=N cipher=NAME reused=yes|no
where N is how many bytes the server sent between the end of the handshake
and the client's first command inside TLS (the session ticket, if it was not
held back for the first reply), NAME the suite of the first session, and
reused whether the second session resumed the first. Every read has a 10 s
timeout.
"""
import select
import socket
import ssl
import sys

from close_notify import reply


def session(ctx, port, offer):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO client.test\r\n")
    reply(f)
    s.sendall(b"STARTTLS\r\n")
    if not reply(f).startswith(b"220"):
        raise SystemExit("STARTTLS refused")
    t = ctx.wrap_socket(s, server_hostname="mx.test", session=offer)
    # OpenSSL reads no further than the handshake needs, so whatever the
    # server sends after it waits in the socket.
    readable, _, _ = select.select([t], [], [], 1.0)
    raw = socket.fromfd(t.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    waiting = len(raw.recv(65536, socket.MSG_PEEK)) if readable else 0
    raw.close()
    tf = t.makefile("rb")
    t.sendall(b"EHLO client.test\r\n")
    reply(tf)
    t.sendall(b"QUIT\r\n")
    reply(tf)
    return waiting, t.cipher()[0], t.session, t.session_reused


def main():
    port = int(sys.argv[1])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    waiting, cipher, ticket, _ = session(ctx, port, None)
    _, _, _, reused = session(ctx, port, ticket)
    print("before-ehlo=%d cipher=%s reused=%s" % (waiting, cipher, "yes" if reused else "no"))


main()
