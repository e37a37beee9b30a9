# Install path for operators: `make install` (as root) builds a release binary and installs it,
# the systemd units and a default config. `make test` runs the whole suite (same as .ci/run).
# `make install-files BIN=path/to/berth` installs an already-built binary (no cargo needed on
# the target; tests/systemd_boot.rs installs the debug build into a booted systemd this way).
PREFIX ?= /usr/local
UNITDIR ?= /etc/systemd/system
BIN ?= target/release/berth
# The session agent is copied into tenant containers, whatever their libc: built static.
AGENT_TARGET ?= x86_64-unknown-linux-gnu
AGENT ?= target/$(AGENT_TARGET)/release/berth-agent

.PHONY: build agent install install-files uninstall test swarm-image

build: agent
	cargo build --release --locked

agent:
	RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols -C debuginfo=0" \
	  cargo build --release --locked -p berth-agent --target $(AGENT_TARGET)
	@echo "built $(AGENT): a berth started from this target directory (cargo run) finds it;" \
	  "make install puts it at /usr/lib/berth/berth-agent"

install: build
	$(MAKE) install-files

install-files:
	install -D -m 0755 $(BIN) $(PREFIX)/bin/berth
	if [ -f $(AGENT) ]; then install -D -m 0755 $(AGENT) /usr/lib/berth/berth-agent; \
	  else echo "no $(AGENT): sessions will use docker exec (run make agent)"; fi
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
	rm -f $(PREFIX)/bin/berth /usr/lib/berth/berth-agent $(UNITDIR)/berth.target $(UNITDIR)/berth-*.service $(UNITDIR)/berth-gateway.socket
	@echo "kept /etc/berth and /var/lib/berth (remove by hand to erase all state)"

test:
	scripts/test

# The image berth's own daemons run from on a swarm (deploy/swarm/stack.yml), built offline from
# the tenant base image: `make swarm-image`, then `docker save berth/berth:local | docker load`
# on every node. SWARM_BIN=target/debug/berth skips the release build.
SWARM_TAG ?= berth/berth:local
SWARM_BIN ?= $(BIN)

swarm-image:
	if [ "$(SWARM_BIN)" = "$(BIN)" ]; then $(MAKE) build; fi
	deploy/swarm/build-image.sh --bin $(SWARM_BIN) --agent $(AGENT) --tag $(SWARM_TAG)
