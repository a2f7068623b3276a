# mirrorfs — the targets a newcomer and CI need.
#   make demo   build, start two local workers, mount a demo web root, show replication
#   make test   every test (unit, FUSE, real sshd workers); installs what it needs

GO        ?= go
BIN       := bin/mirrorfs
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
# Debian packages the tests and the demo use: FUSE, real OpenSSH workers,
# the real tools the integration suite runs through the mount, nginx + wrk,
# network namespaces for fault tests (iptables drops packets at random where
# the kernel has no netem).
DEB_PKGS  := fuse3 openssh-server openssh-client iproute2 iptables \
             vim git tar rsync attr nginx-light wrk
# Debian packages only `make bench` needs, on top of DEB_PKGS: lsyncd, run
# side by side with mirrorfs (integration/lsyncd_bench_test.go); mount and
# e2fsprogs for the benchmarks' own file system (integration/benchfs).
BENCH_PKGS := lsyncd mount e2fsprogs
TEST_TIMEOUT ?= 14m

.PHONY: all build deps bench-deps test test-random race lint fuzz bench demo install clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/mirrorfs

# install_missing installs those of the Debian packages $(1) that are
# missing (as root, with apt-get).
define install_missing
	@missing=""; for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PKGS))
	@$(GO) mod download

test: deps
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	@$(MAKE) --no-print-directory fuzz FUZZ_COUNTS=1

# Random operations through the mount, compared with the workers after
# each round (integration/random_test.go), for RANDOM_SEEDS (a seed or a
# range): not part of make test, see the test's comment.
RANDOM_SEEDS ?= 1-200
test-random: deps
	MIRRORFS_TEST_RANDOM_SEED=$(RANDOM_SEEDS) $(GO) test -count=1 -timeout 60m -run '^TestRandomOperations$$' ./integration/

race: deps
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...

# Every fuzz target: its package, its name and the executions make test
# gives it (about 4 s each here). The decoders of everything that arrives
# from disk or the wire, and the delta round trip, must never panic.
FUZZ_TARGETS := journal:FuzzDecode:40000 agent:FuzzDecode:40000 delta:FuzzPatch:50000 \
                delta:FuzzRoundTrip:2000 delta:FuzzSignature:150000
# make fuzz runs each target for FUZZTIME; make test runs each for its count
# of executions (FUZZ_COUNTS=1), not for a duration: with a duration, Go's
# fuzzing coordinator (go1.26) can fail a target at the deadline with
# "context deadline exceeded" and no failing input (golang/go#75804), which
# failed a CI run of make test.
FUZZTIME ?= 30s
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; \
		fuzztime=$(if $(FUZZ_COUNTS),$${rest#*:}x,$(FUZZTIME)); \
		echo "$(GO) test -run='^\$$' -fuzz='^$$name\$$' -fuzztime=$$fuzztime ./$$pkg/"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$$fuzztime ./$$pkg/; \
	done

# As deps, for BENCH_PKGS.
bench-deps: deps
	$(call install_missing,$(BENCH_PKGS))

# Every benchmark once (-benchtime 1x), one package at a time (-p 1: they
# measure the same CPUs), the raw output kept in BENCH_OUT, then one table
# of the results against issue 6's targets (integration/benchtable; also
# `go run ./integration/benchtable $(BENCH_OUT)` later). The whole run takes
# about half an hour; BENCH selects benchmarks (go test -bench), e.g.
# make bench BENCH=LocalCostGit. A failed benchmark shows as "not run" in
# the table and fails the target after it. The benchmarks run on a new,
# empty ext4 file system with a journal, made for the run and removed after
# it (integration/benchfs); BENCH_FS=root runs them in $TMPDIR instead.
BENCH         ?= .
BENCH_OUT     ?= bin/bench.out
BENCH_TIMEOUT ?= 120m
BENCH_FS      ?= ext4
BENCH_IN       = $(if $(filter root,$(BENCH_FS)),,$(if $(filter ext4,$(BENCH_FS)),integration/benchfs bin,$(error BENCH_FS must be ext4 or root, not $(BENCH_FS))))
bench: bench-deps
	@mkdir -p $(dir $(BENCH_OUT))
	@{ $(BENCH_IN) $(GO) test -p 1 -run='^$$' -bench='$(BENCH)' -benchtime=1x -benchmem -timeout $(BENCH_TIMEOUT) ./... 2>&1; \
		echo $$? > $(BENCH_OUT).rc; } | tee $(BENCH_OUT)
	@echo; $(GO) run ./integration/benchtable $(BENCH_OUT); table=$$?; \
		rc=$$(cat $(BENCH_OUT).rc); rm -f $(BENCH_OUT).rc; \
		if [ "$$rc" != 0 ]; then echo "go test -bench failed (exit $$rc); raw output in $(BENCH_OUT)" >&2; exit $$rc; fi; \
		exit $$table

demo: deps build
	./$(BIN) demo

install: build
	install -m 0755 $(BIN) /usr/local/bin/mirrorfs

clean:
	rm -rf bin
