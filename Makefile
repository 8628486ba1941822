# vrep — make targets. `make test` is what CI runs (.ci/run).
GO      ?= go
PKGS    := ./...
FUZZTIME ?= 20s
# Debian packages the tests drive: real NBD clients, FUSE, file systems,
# and a real browser (headless Chromium) for the status page.
DEBS    := qemu-utils libnbd-bin nbdkit fio fuse3 nbdfuse e2fsprogs util-linux curl openssl chromium fonts-dejavu-core bsdutils
TOOLS   := qemu-io qemu-img qemu-nbd nbdinfo nbdcopy nbdkit nbdfuse fio fusermount3 mkfs.ext4 losetup curl openssl chromium script

.PHONY: build test tools bench bench-nbd bench-fuse bench-resync fuzz soak vet clean install

# install: the binary, the systemd units (Type=notify, watchdog) and, in
# /etc/vrep, example settings (*.yaml.example: copy one to primary.yaml
# or replica.yaml and edit it; an existing file is never overwritten).
# DESTDIR stages the tree elsewhere (packaging); without it systemd is
# told to reload its units.
PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system
install: build
	install -D -m 0755 bin/vrep $(DESTDIR)$(PREFIX)/bin/vrep
	install -D -m 0644 dist/systemd/vrep-primary.service $(DESTDIR)$(UNITDIR)/vrep-primary.service
	install -D -m 0644 dist/systemd/vrep-replica.service $(DESTDIR)$(UNITDIR)/vrep-replica.service
	install -D -m 0644 dist/systemd/vrep-host.service $(DESTDIR)$(UNITDIR)/vrep-host.service
	install -d -m 0700 $(DESTDIR)/etc/vrep
	install -m 0600 dist/systemd/primary.yaml $(DESTDIR)/etc/vrep/primary.yaml.example
	install -m 0600 dist/systemd/replica.yaml $(DESTDIR)/etc/vrep/replica.yaml.example
	install -m 0600 dist/systemd/host.yaml $(DESTDIR)/etc/vrep/host.yaml.example
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; then: cp /etc/vrep/primary.yaml.example /etc/vrep/primary.yaml, edit, systemctl enable --now vrep-primary"

# build: the production binary. Fault points (internal/faultpoint) exist
# only with -tags faultpoints, which the crash tests build for themselves.
build:
	$(GO) build -o bin/vrep ./cmd/vrep

# tools installs the Debian packages the tests need, when any is missing.
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing test tools (missing:$$missing)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEBS) >/dev/null; \
	fi

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) vet -tags faultpoints ./internal/faultpoint

# test: vet, then every package under the race detector, never from the
# test cache (the e2e tests drive binaries and tools it cannot see; the power-cut
# test runs its short tier here; `make soak` runs the long one).
test: tools vet
	$(GO) test -race -short -count=1 -timeout 15m $(PKGS)
	$(GO) test -race -short -count=1 -tags faultpoints ./internal/faultpoint

# soak: the long tiers of the crash tests (make test runs short ones).
# The fault-point loop builds its daemons with -tags faultpoints itself.
soak:
	VREP_POWERCUT_SEEDS=2000 $(GO) test -race -timeout 60m -run 'TestPowerCut' ./blockdev/tracked
	VREP_CRASH_ITERATIONS=300 $(GO) test -timeout 60m -run 'TestCrashLoopWriteOrder' -v ./cmd/vrep
	VREP_E2E_RACE=0 VREP_CRASH_QD32_ITERATIONS=1000 $(GO) test -timeout 120m -run 'TestCrashLoopWriteOrderQD32' -v ./cmd/vrep
	VREP_E2E_RACE=0 VREP_REPL_CRASH_ITERATIONS=200 $(GO) test -timeout 60m -run 'TestReplicationCrashLoop' -v ./cmd/vrep
	VREP_FAILOVER_KILLS=all $(GO) test -short -timeout 30m -run 'KilledAtEachStep' -v ./cmd/vrep
	$(GO) test -race -timeout 30m -run 'TestHistoryPowerCut|TestApplyPowerCut' ./replica/store
	$(GO) test -race -timeout 30m -run 'TestRecyclePowerCut|TestTearAcrossUnsyncedRolls|TestSparePowerCut|TestReusedFileRenameDurableFirst|TestNewLogHeadPowerCut' ./hrl
	VREP_E2E_RACE=0 VREP_FAULTPOINT_ROUNDS=90 $(GO) test -timeout 90m -run 'TestFaultPointCrashes' -v ./cmd/vrep

# fuzz runs every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for spec in \
		./hrl:FuzzOpen ./hrl:FuzzOpenChain ./hrl:FuzzDecodeMarker \
		./nbd:FuzzHandshake ./nbd:FuzzRequest ./nbd:FuzzMetaOption ./nbd:FuzzStatusRequest \
		./internal/names:FuzzDisk ./internal/wocheck:FuzzDecode ./internal/statefile:FuzzDecode \
		./replica/wire:FuzzReadFrame ./replica/wire:FuzzDecodeRecords ./replica/wire:FuzzDecodeRecordsRange \
		./replica/wire:FuzzDecodeResync ./replica/store:FuzzDecodeUndoRef ./replica/seed:FuzzDecodeManifest; do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		echo "== $$fn ($$pkg)"; \
		$(GO) test $$pkg -run XXX -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) 2>&1 | tail -n 3; \
	done

# bench: Go benchmarks, each reporting vrep against a peer in one run.
bench:
	$(GO) test -run XXX -bench . -benchtime 3x ./hrl ./blockdev/tracked
	$(GO) test -run XXX -bench . -benchtime 1x ./replica/store

# bench-nbd, bench-fuse: the issue 20 tables (bench/README.md): every
# workload on a fresh server, on a sparse and on a fully allocated image,
# 3 runs, min / median / max of each ratio; SIZE, SECS, RUNS, WORKLOADS
# and CONDS select less. bench-fuse needs root.
bench-nbd: tools build
	BARE=1 bench/nbd.sh

bench-fuse: tools build
	BARE=1 bench/fuse.sh

# bench-resync: vrep resync vs rsync --inplace --no-whole-file vs a full
# copy of the same pair over loopback (SIZE=1G by default; installs rsync).
bench-resync: build
	bench/resync.sh

clean:
	rm -rf bin
