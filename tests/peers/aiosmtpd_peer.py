"""A receiving SMTP server nobody on this project wrote (aiosmtpd), for
postern's delivery tests.

usage: aiosmtpd_peer.py HOST PORT OUTDIR [--tls CERT KEY] [--fail-first]

Every accepted message is written to OUTDIR/N.json with whether the
session was inside TLS. --fail-first answers the first RCPT with 451.
Prints "ready PORT" once listening; stops when stdin closes.
"""
import json
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, outdir, fail_first):
        self.outdir = outdir
        self.fail_first = fail_first
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.fail_first:
            self.fail_first = False
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        rec = {
            "tls": session.ssl is not None,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.original_content.decode("utf-8", "replace"),
        }
        path = os.path.join(self.outdir, "%d.json" % self.count)
        with open(path + ".tmp", "w") as f:
            json.dump(rec, f)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 Message accepted"


def main():
    host, port, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[4:]
    ctx = None
    if "--tls" in args:
        i = args.index("--tls")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args[i + 1], args[i + 2])
    handler = Handler(outdir, "--fail-first" in args)
    c = Controller(handler, hostname=host, port=port, tls_context=ctx, require_starttls=False)
    c.start()
    print("ready %d" % port, flush=True)
    sys.stdin.read()
    c.stop()


if __name__ == "__main__":
    main()
