# vrep — make targets. `make test` is what CI runs (.ci/run).
GO      ?= go
PKGS    := ./...
FUZZTIME ?= 20s
# Debian packages the tests drive: real NBD clients, FUSE, file systems.
DEBS    := qemu-utils libnbd-bin nbdkit fio fuse3 nbdfuse e2fsprogs util-linux curl openssl
TOOLS   := qemu-io qemu-img qemu-nbd nbdinfo nbdcopy nbdkit nbdfuse fio fusermount3 mkfs.ext4 losetup curl openssl

.PHONY: build test tools bench bench-nbd bench-fuse bench-resync fuzz soak vet clean

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

# test: vet, then every package under the race detector (the power-cut
# test runs its short tier here; `make soak` runs the long one).
test: tools vet
	$(GO) test -race -short -timeout 15m $(PKGS)

# soak: the long tiers of the crash tests (make test runs short ones).
soak:
	VREP_POWERCUT_SEEDS=2000 $(GO) test -race -timeout 60m -run 'TestPowerCut' ./blockdev/tracked
	VREP_CRASH_ITERATIONS=300 $(GO) test -timeout 60m -run 'TestCrashLoopWriteOrder' -v ./cmd/vrep
	VREP_E2E_RACE=0 VREP_CRASH_QD32_ITERATIONS=1000 $(GO) test -timeout 120m -run 'TestCrashLoopWriteOrderQD32' -v ./cmd/vrep
	VREP_E2E_RACE=0 VREP_REPL_CRASH_ITERATIONS=200 $(GO) test -timeout 60m -run 'TestReplicationCrashLoop' -v ./cmd/vrep
	$(GO) test -race -timeout 30m -run 'TestHistoryPowerCut|TestApplyPowerCut' ./replica/store
	$(GO) test -race -timeout 30m -run 'TestRecyclePowerCut|TestTearAcrossUnsyncedRolls' ./hrl
	VREP_E2E_RACE=0 VREP_FAULTPOINT_ROUNDS=90 $(GO) test -timeout 90m -run 'TestFaultPointCrashes' -v ./cmd/vrep

# fuzz runs every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for spec in \
		./hrl:FuzzOpen ./hrl:FuzzOpenChain ./hrl:FuzzDecodeMarker \
		./nbd:FuzzHandshake ./nbd:FuzzRequest \
		./internal/names:FuzzDisk ./internal/wocheck:FuzzDecode ./internal/statefile:FuzzDecode \
		./replica/wire:FuzzReadFrame ./replica/wire:FuzzDecodeRecords ./replica/wire:FuzzDecodeRecordsRange \
		./replica/store:FuzzDecodeUndoRef; do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		echo "== $$fn ($$pkg)"; \
		$(GO) test $$pkg -run XXX -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) 2>&1 | tail -n 3; \
	done

# bench: Go benchmarks, each reporting vrep against a peer in one run.
bench:
	$(GO) test -run XXX -bench . -benchtime 3x ./hrl ./blockdev/tracked
	$(GO) test -run XXX -bench . -benchtime 1x ./replica/store

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
