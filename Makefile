# Install path for operators: `make install` (as root) builds a release binary and installs it,
# the systemd units and a default config. `make test` runs the whole suite (same as .ci/run).
# `make install-files BIN=path/to/berth` installs an already-built binary (no cargo needed on
# the target; tests/systemd_boot.rs installs the debug build into a booted systemd this way).
PREFIX ?= /usr/local
UNITDIR ?= /etc/systemd/system
BIN ?= target/release/berth

.PHONY: build install install-files uninstall test

build:
	cargo build --release --locked

install: build
	$(MAKE) install-files

install-files:
	install -D -m 0755 $(BIN) $(PREFIX)/bin/berth
	install -d -m 0700 /etc/berth /var/lib/berth
	test -e /etc/berth/berth.toml || $(PREFIX)/bin/berth config show > /etc/berth/berth.toml
	chmod 0600 /etc/berth/berth.toml
	install -d -m 0755 $(UNITDIR)
	for u in systemd/*.service systemd/*.target systemd/*.socket; do \
	  sed 's|/usr/local/bin/berth|$(PREFIX)/bin/berth|' $$u > $(UNITDIR)/$$(basename $$u); done
	-systemctl daemon-reload
	@echo "installed; next: berth image build && systemctl enable --now berth.target"

uninstall:
	-systemctl disable --now berth.target berth-gateway.service berth-dns.service berth-netfilter.service berth-gateway.socket
	rm -f $(PREFIX)/bin/berth $(UNITDIR)/berth.target $(UNITDIR)/berth-*.service $(UNITDIR)/berth-gateway.socket
	@echo "kept /etc/berth and /var/lib/berth (remove by hand to erase all state)"

test:
	scripts/test
