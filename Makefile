# postern: build, try, test and install.
#
#   make run      build, make ./var (self-signed certificate, spool, test
#                 user) and start postern in the foreground on 127.0.0.1
#   make test     cargo fmt --check, clippy -D warnings, cargo test

PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
MANDIR     ?= $(PREFIX)/share/man
DESTDIR    ?=
CARGO      ?= cargo

VAR        := $(CURDIR)/var
RUN_USER   ?= test
RUN_PASS   ?= test

.PHONY: all run test bench clean

all:
	$(CARGO) build --release

test:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

bench:
	$(CARGO) bench --bench delivery

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
	@echo "postern: try: swaks --server 127.0.0.1:2587 -tls -au $(RUN_USER) -ap $(RUN_PASS) --from $(RUN_USER)@localhost --to someone@example.net"
	./target/release/postern -d -f $(VAR)/postern.conf

clean:
	$(CARGO) clean
	rm -rf $(VAR)
