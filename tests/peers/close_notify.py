"""Does postern end its TLS sessions with close_notify? Python's ssl module
(OpenSSL) tells a clean TLS end from a truncated one when ragged EOFs are
not suppressed, as Exim's GnuTLS does.

usage:
  close_notify.py client PORT starttls|smtps
      talk to postern as a client: EHLO, (STARTTLS,) EHLO, QUIT, then read
      on after the 221.
  close_notify.py server PORT CERT KEY
      take one delivery from postern (STARTTLS offered), answer its QUIT,
      then read on after the 221.

Prints "clean" when the peer sent close_notify, "ragged" when the TCP
connection ended without it; exits non-zero on anything else. Every read
has a 10 s timeout.
"""
import socket
import ssl
import sys


def reply(fp):
    # Bounded: a reply has at most a few lines here.
    for _ in range(50):
        line = fp.readline()
        if not line:
            raise SystemExit("connection closed mid-reply")
        if line[3:4] != b"-":
            return line
    raise SystemExit("reply too long")


def after_close(t):
    try:
        data = t.recv(100)
    except ssl.SSLEOFError:
        return "ragged"
    return "clean" if data == b"" else "data after 221: %r" % data


def client(port, mode):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if mode == "smtps":
        t = ctx.wrap_socket(s, server_hostname="x", suppress_ragged_eofs=False)
        tf = t.makefile("rb")
        reply(tf)
    else:
        f = s.makefile("rb")
        reply(f)
        s.sendall(b"EHLO c.test\r\n")
        reply(f)
        s.sendall(b"STARTTLS\r\n")
        reply(f)
        t = ctx.wrap_socket(s, server_hostname="x", suppress_ragged_eofs=False)
        tf = t.makefile("rb")
    t.sendall(b"EHLO c.test\r\n")
    reply(tf)
    t.sendall(b"QUIT\r\n")
    if not reply(tf).startswith(b"221"):
        raise SystemExit("no 221")
    print(after_close(t), flush=True)


def server(port, cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.2", port))
    ls.listen(1)
    print("ready", flush=True)
    ls.settimeout(30)
    s, _ = ls.accept()
    s.settimeout(10)
    f = s.makefile("rb")
    s.sendall(b"220 close.test ESMTP\r\n")
    f.readline()
    s.sendall(b"250-close.test\r\n250 STARTTLS\r\n")
    if not f.readline().upper().startswith(b"STARTTLS"):
        raise SystemExit("no STARTTLS")
    s.sendall(b"220 go ahead\r\n")
    t = ctx.wrap_socket(s, server_side=True, suppress_ragged_eofs=False)
    tf = t.makefile("rb")
    # Bounded: one message's dialogue.
    for _ in range(20):
        line = tf.readline().upper()
        if line.startswith(b"EHLO"):
            t.sendall(b"250 close.test\r\n")
        elif line.startswith(b"DATA"):
            t.sendall(b"354 go\r\n")
            for _ in range(10000):
                if tf.readline() in (b".\r\n", b""):
                    break
            t.sendall(b"250 2.0.0 ok\r\n")
        elif line.startswith(b"QUIT"):
            t.sendall(b"221 bye\r\n")
            print(after_close(t), flush=True)
            return
        elif not line:
            raise SystemExit("closed before QUIT")
        else:
            t.sendall(b"250 ok\r\n")
    raise SystemExit("no QUIT")


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client(int(sys.argv[2]), sys.argv[3])
    else:
        server(int(sys.argv[2]), sys.argv[3], sys.argv[4])
