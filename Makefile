# postern: build, try, test and install.
#
#   make run      build, make ./var (self-signed certificate, spool, test
#                 user) and start postern in the foreground on 127.0.0.1
#   make test     cargo fmt --check, clippy -D warnings, cargo test, and
#                 cargo audit against the RustSec database in ADVISORY_DB

PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
SYSCONFDIR ?= /etc
MANDIR     ?= $(PREFIX)/share/man
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
SPOOLDIR   ?= /var/spool/postern
DESTDIR    ?=
CARGO      ?= cargo
# release for real use; `make install PROFILE=debug` installs a debug build
PROFILE    ?= release
TARGETDIR  ?= target
BIN        := $(TARGETDIR)/$(PROFILE)

VAR        := $(CURDIR)/var
RUN_USER   ?= test
RUN_PASS   ?= test

# The RustSec advisory database (an offline copy; see its README).
ADVISORY_DB ?= ../shared/advisory-db

.PHONY: all run test audit bench stress install uninstall clean

all:
	$(CARGO) build --profile $(if $(filter debug,$(PROFILE)),dev,$(PROFILE)) --bins

# Paths in the init scripts follow SBINDIR and SYSCONFDIR.
SUBST = sed -e 's|/usr/local/sbin|$(SBINDIR)|g' -e 's|/etc/postern|$(SYSCONFDIR)/postern|g'

install: all
	install -d -m 755 $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(SYSCONFDIR)/postern $(DESTDIR)$(SYSCONFDIR)/init.d $(DESTDIR)$(SYSTEMDDIR)
	@# Stripped: the build keeps its debug info for profiling.
	install -s -m 755 $(BIN)/postern $(DESTDIR)$(SBINDIR)/postern
	install -s -m 755 $(BIN)/posternctl $(DESTDIR)$(SBINDIR)/posternctl
	install -m 644 man/postern.8 man/posternctl.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 644 man/postern.conf.5 $(DESTDIR)$(MANDIR)/man5/
	@# Never overwrite an administrator's configuration.
	if [ -e $(DESTDIR)$(SYSCONFDIR)/postern/postern.conf ]; then \
		install -m 644 etc/postern.conf $(DESTDIR)$(SYSCONFDIR)/postern/postern.conf.sample; \
	else \
		install -m 644 etc/postern.conf $(DESTDIR)$(SYSCONFDIR)/postern/postern.conf; \
	fi
	$(SUBST) etc/postern.service > $(DESTDIR)$(SYSTEMDDIR)/postern.service
	chmod 644 $(DESTDIR)$(SYSTEMDDIR)/postern.service
	$(SUBST) etc/init.d/postern > $(DESTDIR)$(SYSCONFDIR)/init.d/postern
	chmod 755 $(DESTDIR)$(SYSCONFDIR)/init.d/postern
	@# As root on the real system, what the sample configuration needs to
	@# start: the _postern user (in the mail group, for /var/mail/USER), its
	@# spool, empty users and aliases tables, and, like Debian's snakeoil, a
	@# self-signed certificate for this host when there is none. Nothing
	@# that exists is changed.
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
		id _postern >/dev/null 2>&1 || useradd --system --home-dir $(SPOOLDIR) --no-create-home \
			--shell /usr/sbin/nologin _postern; \
		if getent group mail >/dev/null; then usermod -a -G mail _postern; fi; \
		install -d -m 700 -o _postern -g _postern $(SPOOLDIR); \
		[ -e $(SYSCONFDIR)/postern/users ] || install -m 600 /dev/null $(SYSCONFDIR)/postern/users; \
		[ -e $(SYSCONFDIR)/postern/aliases ] || install -m 644 /dev/null $(SYSCONFDIR)/postern/aliases; \
		if [ ! -e $(SYSCONFDIR)/postern/cert.pem ] && [ ! -e $(SYSCONFDIR)/postern/key.pem ]; then \
			host=$$(hostname -f 2>/dev/null || hostname); \
			(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
				-subj "/CN=$$host" -addext "subjectAltName=DNS:$$host" \
				-keyout $(SYSCONFDIR)/postern/key.pem -out $(SYSCONFDIR)/postern/cert.pem 2>/dev/null) && \
			chmod 644 $(SYSCONFDIR)/postern/cert.pem && \
			echo "made a self-signed certificate for $$host in $(SYSCONFDIR)/postern/cert.pem (key: key.pem, mode 600); replace it with a real one"; \
		fi; \
	fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/postern $(DESTDIR)$(SBINDIR)/posternctl \
		$(DESTDIR)$(MANDIR)/man8/postern.8 $(DESTDIR)$(MANDIR)/man8/posternctl.8 \
		$(DESTDIR)$(MANDIR)/man5/postern.conf.5 \
		$(DESTDIR)$(SYSTEMDDIR)/postern.service $(DESTDIR)$(SYSCONFDIR)/init.d/postern \
		$(DESTDIR)$(SYSCONFDIR)/postern/postern.conf.sample
	@# The configuration, tables, certificate, the _postern user and the
	@# spool (mail!) are kept.
	@echo "kept $(SYSCONFDIR)/postern/ and $(SPOOLDIR); remove them by hand if wanted"

test: audit
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

# A crate with a known vulnerability, unmaintained, unsound or yanked fails
# the build. cargo-audit is installed on first use (about 6 minutes).
audit:
	@test -d "$(ADVISORY_DB)/crates" || { echo "no RustSec database at $(ADVISORY_DB): set ADVISORY_DB" >&2; exit 1; }
	command -v cargo-audit >/dev/null || $(CARGO) install --locked --quiet cargo-audit
	$(CARGO) fetch --quiet
	$(CARGO) audit --db $(ADVISORY_DB) --no-fetch --deny warnings

# Figures go to bench/RESULTS.md (and the terminal). Each program starts
# on a settled disk: on ext4 without a journal, a file created within a
# minute of many deletions (6 minutes while their inode table block is in
# memory and dirty, which new files keep it) scans past every freed inode,
# so one program's clean-up (or the last run's) would slow the next. As
# root, writing the page cache back and dropping it settles the disk at
# once; otherwise we wait BENCH_SETTLE seconds.
BENCH_SETTLE ?= 360
SETTLE = sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 1 > /proc/sys/vm/drop_caches; \
	else echo "waiting $(BENCH_SETTLE)s for the disk to settle"; sleep $(BENCH_SETTLE); fi
bench:
	$(CARGO) build --release --benches --bins
	$(SETTLE)
	$(CARGO) bench --bench load
	$(SETTLE)
	$(CARGO) bench --bench delivery
	$(SETTLE)
	$(CARGO) bench --bench versus_postfix
	$(SETTLE)
	$(CARGO) bench --bench spool

# Slow hardening runs: kill -9 under load, a full disk, testssl.sh.
# Needs root (tmpfs) and testssl.sh, as CI has.
stress:
	$(CARGO) test --release --test stress -- --ignored --nocapture --test-threads=1
	@# Coverage-guided fuzzing of the session, 60 s (cargo-fuzz on stable: -s none).
	cd fuzz && $(CARGO) fuzz run -s none session -- -max_total_time=60
	@# The MTA-STS, HTTP and certificate parsers, 20 s.
	cd fuzz && $(CARGO) fuzz run -s none parsers -- -max_total_time=20

$(VAR)/key.pem:
	mkdir -p $(VAR)
	umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
		-keyout $(VAR)/key.pem -out $(VAR)/cert.pem 2>/dev/null
	chmod 600 $(VAR)/key.pem

$(VAR)/users:
	mkdir -p $(VAR)
	umask 077 && printf '%s %s\n' '$(RUN_USER)' "$$(openssl passwd -6 '$(RUN_PASS)')" > $@

$(VAR)/postern.conf: $(VAR)/key.pem $(VAR)/users
	mkdir -p $(VAR)/queue $(VAR)/mail
	printf '%s\n' \
		'# Made by `make run`: a throwaway setup on unprivileged loopback ports.' \
		'hostname localhost' \
		'queue "$(VAR)/queue"' \
		'pki localhost cert "$(VAR)/cert.pem"' \
		'pki localhost key "$(VAR)/key.pem"' \
		'table users file:$(VAR)/users' \
		'table locals { postmaster, $(RUN_USER) }' \
		'listen on 127.0.0.1 port 2525 tls pki localhost' \
		'listen on 127.0.0.1 port 2587 tls-require pki localhost auth <users>' \
		'listen on 127.0.0.1 port 2465 smtps pki localhost auth <users>' \
		'action "local" maildir "$(VAR)/mail/%{user}/Maildir" users <locals>' \
		'action "out" relay' \
		'match from any for local action "local"' \
		'match auth from any for any action "out"' \
		> $@
	@# postern will not run as root unless told to: this setup is throwaway.
	if [ "$$(id -u)" = 0 ]; then echo 'user root' >> $@; fi

run: all $(VAR)/postern.conf
	@echo "postern: STARTTLS on 127.0.0.1:2525, submission (STARTTLS required, AUTH) on 2587, smtps on 2465"
	@echo "postern: test user '$(RUN_USER)' password '$(RUN_PASS)'; spool in $(VAR)/queue"
	@echo "postern: try: swaks --server 127.0.0.1:2587 -tls -au $(RUN_USER) -ap $(RUN_PASS) --from $(RUN_USER)@localhost --to $(RUN_USER)@localhost"
	@echo "postern: it lands in $(VAR)/mail/$(RUN_USER)/Maildir/new/ (mail to other domains is relayed to their MX, or bounced back there)"
	$(BIN)/postern -d -f $(VAR)/postern.conf

clean:
	$(CARGO) clean
	rm -rf $(VAR)
