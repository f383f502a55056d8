# containerd-shim-custom-v2
GO       ?= go
PREFIX   ?= /usr/local
# BINDIR, GOARCH and CC (a cross compiler) build for another architecture:
# make arm64 does.
BINDIR   ?= bin
GOARCH   ?= $(shell $(GO) env GOARCH)
BIN      := $(BINDIR)/containerd-shim-custom-v2
PKG      := github.com/custom-runtime/containerd-shim-custom-v2
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
AGG      := $(BINDIR)/containerd-shim-custom-metrics
INST     := $(BINDIR)/containerd-shim-custom-install
LDFLAGS  := -s -w -X $(PKG)/pkg/shim.Version=$(VERSION) -X $(PKG)/pkg/shim.Revision=$(REVISION)
AGG_LDFLAGS := -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)
# containerd lines the integration suite runs against.
CONTAINERD_VERSIONS ?= 2.4.2 2.2.9 1.7.36
export CONTAINERD_VERSIONS

.PHONY: all build arm64 image deps test unit-arm64 test-cgroup2 test-systemd lint unit integration stress fuzz demo bench soak peer e2e-k8s install clean help

all: build

# The shim links runc's libcontainer (in-process runc backend): CGO for
# nsenter, libseccomp for the seccomp tag (a spec with seccomp is enforced,
# never dropped), and a static binary as runc builds itself. no_grpc:
# containerd's API packages without their gRPC clients (the shim speaks
# ttrpc; TestShimLinksNoAggregator guards what it links).
BUILDTAGS ?= seccomp netgo osusergo no_grpc
build: ## build the shim (static: CGO, libseccomp), the node metrics aggregator and the node installer into bin/
	@test -f /usr/lib/$$($(CC) -dumpmachine)/libseccomp.a || { echo "libseccomp-dev is missing: make deps (or apt-get install libseccomp-dev)"; exit 1; }
	CGO_ENABLED=1 CC=$(CC) GOARCH=$(GOARCH) $(GO) build -trimpath -tags "$(BUILDTAGS)" -ldflags "$(LDFLAGS) -extldflags -static" -o $(BIN) ./cmd/containerd-shim-custom-v2
	CGO_ENABLED=0 GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags "$(AGG_LDFLAGS)" -o $(AGG) ./cmd/containerd-shim-custom-metrics
	CGO_ENABLED=0 GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(INST) ./cmd/containerd-shim-custom-install

# libseccomp-golang asks pkg-config for its flags: libseccomp:arm64's .pc,
# not the host's.
arm64: ## cross-build the three binaries for linux/arm64 into bin/arm64 (Debian's aarch64 toolchain and libseccomp:arm64; installs them first)
	bash scripts/arm64.sh deps
	PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
	  $(MAKE) --no-print-directory build BINDIR=bin/arm64 GOARCH=arm64 CC=aarch64-linux-gnu-gcc VERSION=$(VERSION) REVISION=$(REVISION)
	bash scripts/arm64.sh check bin/arm64

IMAGE ?= ghcr.io/custom-runtime/containerd-shim-custom-v2
comma := ,
# ARCHES=amd64 for an image without the arm64 cross build
ARCHES ?= amd64 arm64
image: build $(filter arm64,$(ARCHES)) ## the installer image as an OCI archive (_output/image/image.tar and layout/), an index of $(ARCHES), tagged $(IMAGE):$(VERSION); no container engine
	$(GO) run ./integration/cmd/mkimage -tag $(IMAGE):$(VERSION) -out _output/image -contrib contrib -arch amd64=bin,/bin/busybox \
	  $(if $(filter arm64,$(ARCHES)),-arch arm64=bin/arm64$(comma)bin/arm64/busybox)

deps: ## install what the tests need (apt packages, containerd builds cached in .tools/)
	bash scripts/deps.sh

test: deps build lint unit unit-arm64 fuzz integration ## everything CI runs: lint, vet, unit tests (-race; arm64 under qemu-user), integration suite (root)

lint: ## golangci-lint (.golangci.yml) and helm lint of the chart; the first run builds both into .tools/bin
	bash scripts/lint.sh
	bash scripts/helm-lint.sh

unit: ## go vet, gofmt check and unit tests with the race detector
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) test -race -count=1 ./pkg/...

unit-arm64: ## the pure-logic unit tests built for arm64 and run under qemu-user (scripts/arm64.sh)
	bash scripts/arm64.sh deps
	bash scripts/arm64.sh unit

integration: build ## integration suite against real containerd + runc (root; run `make deps` first)
	@mkdir -p _output
	@rm -f _output/report.txt
	SHIM_BINARY=$(abspath $(BIN)) TEST_REPORT=$(abspath _output/report.txt) bash -o pipefail -c \
		'$(GO) test -count=1 -timeout 45m -v ./integration/... | tee _output/integration.log' || \
		{ echo "--- figures"; cat _output/report.txt 2>/dev/null; bash scripts/failures.sh _output/integration.log; exit 1; }
	@echo "--- figures"; cat _output/report.txt 2>/dev/null || true

test-cgroup2: deps build ## the cgroup and lifecycle integration tests on pure cgroup v2: a QEMU guest (TCG) runs them on containerd 2.4.2 x runc, runsc (root; the first run fetches qemu and Debian's kernel into .tools/cgroup2)
	bash scripts/cgroup2/run.sh

test-systemd: deps build ## every CRI handler under the systemd cgroup driver: the cgroup v2 guest with systemd as PID 1 (scripts/systemd), on containerd 2.4.2 x runc, runsc (root)
	bash scripts/systemd/run.sh

stress: build ## the long fault and load runs: 1000 lifecycles, 200-exec storm, 50 tasks across a restart, 300000 fuzz inputs per target
	@mkdir -p _output
	@rm -f _output/stress.txt
	SHIM_BINARY=$(abspath $(BIN)) TEST_REPORT=$(abspath _output/stress.txt) CHURN_LIFECYCLES=1000 CHURN_LIFECYCLES_GVISOR=250 \
		EXEC_STORM=200 EXEC_STORM_GVISOR=100 RESTART_TASKS=50 \
		$(GO) test -count=1 -timeout 60m -v -run 'TestChurn|TestExecStorm|TestContainerdRestart' ./integration/
	$(MAKE) fuzz FUZZTIME=300000x
	@cat _output/stress.txt

FUZZTIME ?= 20000x
fuzz: ## run each fuzz target for FUZZTIME (a count: time limits make the Go fuzzer flake)
	@for t in oci:FuzzParseConfig oci:FuzzConfigFromOptions oci:FuzzReadSpec aggregator:FuzzParseSnapshot sandbox:FuzzDecodePodConfig; do \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./pkg/$${t%%:*}/ || exit 1; done

demo: deps build ## the main job: private containerd with this shim, containers on each backend
	bash scripts/demo.sh

bench: deps build ## benchmarks against containerd's runc shim (and gVisor's shim for memory); writes docs/benchmarks.md (root)
	bash scripts/gvisor-shim.sh
	$(GO) run ./integration/bench $(BENCH_FLAGS)

soak: deps build ## 30 minutes (SOAK_DURATION) of mixed load at parallelism 10 (SOAK_PARALLEL) on containerd 2.4.2, containerd restarted twice; fails on a resource trend, a lost exit or a leftover; writes docs/soak.md and docs/soak.svg (root; not part of make test)
	$(GO) run ./integration/soak

peer: deps build ## peer suites offline: containerd's client suite, critest, crictl against this shim (runc, gVisor) and containerd's runc shim; fails unless ours pass what the runc shim passes (root; _output/peer/summary.txt)
	bash scripts/peer/build-tools.sh
	bash scripts/peer/run-all.sh
	bash scripts/peer/gate.sh

e2e-k8s: deps build image ## Kubernetes 1.34 on loopback: Pods on every RuntimeClass of this shim on one node, then the chart on a two-node cluster (install, scheduling, upgrade and rollback from a git-history build, uninstall) (root; the first run builds Kubernetes into .tools/k8s, ~10 min)
	bash scripts/k8s/e2e.sh

install: build ## install the shim and the metrics aggregator into $(PREFIX)/bin (containerd finds the shim on its PATH)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/containerd-shim-custom-v2
	install -D -m 0755 $(AGG) $(DESTDIR)$(PREFIX)/bin/containerd-shim-custom-metrics

clean: ## remove build output (keeps the .tools cache)
	rm -rf bin _output

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
