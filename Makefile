# otamq: `make run` starts a broker on embedded defaults, `make test` runs
# every test (installing what it needs first), `make demo` shows a staged
# rollout to simulated devices.

GO        ?= go
FUZZTIME  ?= 20s
STATICCHECK_VERSION ?= v0.8.2
# VERSION is what --version prints (default: git describe).
VERSION   ?= $(shell git describe --always --dirty --tags 2>/dev/null)
LDFLAGS   := -X github.com/otamq/otamq/internal/version.version=$(VERSION)

GO_FUZZ_PKGS := ./ota/wire ./ota/admin ./httpapi ./ota/manifest ./ota/rollout ./cmd/devsim/sim

.PHONY: all build run demo test test-go test-c e2e deps lint fmt vet staticcheck fuzz bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/otamq ./cmd/otamq
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/otactl ./cmd/otactl
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/devsim ./cmd/devsim

## run: the broker on loopback, data under ./data, first operator printed
## (RUNFLAGS adds flags, e.g. make run RUNFLAGS="--data-dir other-data").
run: build
	./bin/otamq $(RUNFLAGS)

## demo: the broker, 200 simulated devices and a rollout whose canary fails
## its health check and pauses it, then the fixed release to every device
## (about a minute; MQTT on 127.0.0.1:1884, metrics on 127.0.0.1:9101;
## DEMOFLAGS adds flags, e.g. make demo DEMOFLAGS=--keep; see
## ./bin/devsim demo --help).
demo: build
	./bin/devsim demo $(DEMOFLAGS)

## deps: Debian packages the tests use (.ci/packages), when missing.
deps:
	./.ci/deps

## test: lint, every Go test with the race detector (fuzz seed corpora
## included), and the C agent's tests.
test: deps lint test-go test-c

test-go:
	$(GO) test -race -count=1 ./...

test-c:
	$(MAKE) -C agent-c test

## e2e: the end-to-end suite's long version (test/e2e: the otamq binary,
## otamq-agent --supervise processes and otactl, full agent counts; a few
## minutes on 2 cores), then docs/RELIABILITY.md rendered from what its
## scenarios measured (a failed scenario is marked failed, one that did
## not run "not run"). E2E_SEED=N repeats a run's seed (each run prints
## its own); `make test` runs the short version.
E2E_RESULTS ?= $(CURDIR)/bin/e2e-results
e2e: deps
	rm -rf $(E2E_RESULTS)
	OTAMQ_E2E_LONG=1 OTAMQ_E2E_RESULTS=$(E2E_RESULTS) $(if $(E2E_SEED),OTAMQ_E2E_SEED=$(E2E_SEED)) \
	  $(GO) test -race -count=1 -timeout 30m -v ./test/e2e/ ; rc=$$?; \
	  $(GO) run ./test/e2e/report/render -results $(E2E_RESULTS) -out docs/RELIABILITY.md || exit 1; exit $$rc

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null)); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

## fuzz: every Go fuzz target for FUZZTIME, then the agent's libFuzzer
## harnesses.
fuzz:
	@for pkg in $(GO_FUZZ_PKGS); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1x || exit 1; \
	  done; \
	done
	$(MAKE) -C agent-c fuzz

## bench: throughput and memory against baselines measured in the same run
## (see docs/BENCHMARKS.md).
bench:
	$(GO) run ./test/bench

clean:
	rm -rf bin
	$(MAKE) -C agent-c clean
