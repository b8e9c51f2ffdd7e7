#!/usr/bin/env bash
# The real install, as a new administrator does it, as root on a
# disposable machine (CI runs it after `make stress`, whose release build
# it installs): make install, postern -n on the installed sample, the SysV
# script, a swaks STARTTLS delivery on port 25 to a local user, make
# uninstall. It changes the system (/usr/local, /etc/postern, the _postern
# user), so it runs only as root and only when asked to: CI=true or
# POSTERN_INSTALL_TEST=1. Ends with "install: N passed, M failed".
set -u
cd "$(dirname "$0")/.." || exit 1

if [ "$(id -u)" != 0 ] || { [ "${CI:-}" != true ] && [ "${POSTERN_INSTALL_TEST:-}" != 1 ]; }; then
    echo "install: skipped (needs root and CI=true or POSTERN_INSTALL_TEST=1)"
    exit 0
fi

pass=0
fail=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

step() {
    local what=$1
    shift
    if "$@" >"$log" 2>&1; then
        echo "ok: $what"
        pass=$((pass + 1))
    else
        echo "FAILED: $what"
        sed 's/^/    /' "$log"
        fail=$((fail + 1))
    fi
}

# Poll for up to 20 s (bounded) until the command succeeds.
within_20s() {
    local _
    for _ in $(seq 40); do
        "$@" && return 0
        sleep 0.5
    done
    return 1
}

listening_on_25() { ss -Hltn 'sport = :25' | grep -q LISTEN; }
delivered() { compgen -G '/var/mail/postmaster/Maildir/new/*' >/dev/null; }
swaks_starttls() {
    swaks --server 127.0.0.1:25 -tls \
        --ehlo client.test --from someone@example.net --to postmaster@localhost \
        --header 'Subject: installed' --timeout 20 | tee /dev/stderr | grep -q '^<~  250 2.0.0 Ok: queued as'
}

if ss -Hltn 'sport = :25' | grep -q LISTEN; then
    echo "install: port 25 is taken on this machine; cannot test the installed daemon"
    echo "install: 0 passed, 1 failed"
    exit 1
fi

step "make install (as root, no DESTDIR)" make install
mode() { test "$(stat -c %a "$1")" = "$2"; }
step "a self-signed certificate was made" test -s /etc/postern/cert.pem
step "its key is mode 600" mode /etc/postern/key.pem 600
step "an empty users table (mode 600) was made" mode /etc/postern/users 600
step "an empty aliases table was made" test -e /etc/postern/aliases
step "_postern is in the mail group" sh -c 'id -nG _postern | grep -qw mail'
step "the installed binaries are stripped" \
    sh -c '! readelf -S /usr/local/sbin/postern | grep -q debug_info && ! readelf -S /usr/local/sbin/posternctl | grep -q debug_info'
step "postern -n accepts the installed sample" /usr/local/sbin/postern -n -f /etc/postern/postern.conf
step "/etc/init.d/postern start" /etc/init.d/postern start
step "STARTTLS served on port 25" within_20s listening_on_25
step "swaks delivers over STARTTLS on port 25" swaks_starttls
step "the message lands in /var/mail/postmaster/Maildir/new" within_20s delivered
step "/etc/init.d/postern stop" /etc/init.d/postern stop
step "the pid file is gone" within_20s test ! -e /run/postern.pid
step "make uninstall" make uninstall
step "binaries, man pages and scripts are gone" \
    sh -c '! test -e /usr/local/sbin/postern && ! test -e /etc/init.d/postern && ! test -e /usr/local/share/man/man8/postern.8'
step "the configuration and the spool are kept" test -e /etc/postern/postern.conf -a -d /var/spool/postern
rm -rf /var/mail/postmaster

echo "install: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
