// Package e2e is otamq's end-to-end suite (issue 10): the otamq binary, the
// otactl command line and otamq-agent --supervise processes (the C agent's
// POSIX port, a simulated device with A/B slots in files) together, as an
// operator and a fleet use them, with faults put in on purpose. It talks to
// the system only the way its users do: otactl for every operator action and
// read, the broker's /metrics over HTTP, the agents' own files (slots,
// otadata, persisted state) and logs.
//
// It is its own package rather than more files in test/ because it is a
// black box: it needs none of test/'s in-process harness, keeps its own
// settings (below) without touching test/'s, and `make e2e` runs exactly
// it.
//
// Settings (environment, so that `go test ./...` passes no unknown flag to
// other packages):
//
//	OTAMQ_E2E_LONG=1       the long version (make e2e): full agent counts
//	OTAMQ_E2E_SEED=N       the seed (printed by every run; images, group draws)
//	OTAMQ_E2E_RESULTS=DIR  each scenario writes its outcome there (report.Result),
//	                       rendered into docs/RELIABILITY.md by make e2e
//	OTAMQ_E2E_VERBOSE=1    agents log debug lines too
//
// Without OTAMQ_E2E_LONG the short version runs (in make test): the same
// scenarios and checks with fewer agents. A failing scenario prints the
// broker's log, each agent's log and the rollouts' status.
package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// suite holds the settings of this run.
var suite struct {
	long    bool
	seed    uint64
	results string
	verbose bool
	bin     string // directory of the built binaries
}

func TestMain(m *testing.M) {
	suite.long = os.Getenv("OTAMQ_E2E_LONG") == "1"
	suite.results = os.Getenv("OTAMQ_E2E_RESULTS")
	suite.verbose = os.Getenv("OTAMQ_E2E_VERBOSE") == "1"
	if s := os.Getenv("OTAMQ_E2E_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "OTAMQ_E2E_SEED=%q: %v\n", s, err)
			os.Exit(2)
		}
		suite.seed = n
	} else {
		suite.seed = uint64(time.Now().UnixNano()) % 1e9
	}
	mode := "short"
	if suite.long {
		mode = "long"
	}
	fmt.Printf("e2e: %s version, seed %d (OTAMQ_E2E_SEED=%d reproduces it)\n", mode, suite.seed, suite.seed)
	dir, err := os.MkdirTemp("", "otamq-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	suite.bin = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// mode is "long" or "short".
func mode() string {
	if suite.long {
		return "long"
	}
	return "short"
}

// rng is the random source of scenario n, from the run's seed.
func rng(n uint64) *rand.Rand { return rand.New(rand.NewPCG(suite.seed, n)) }

var builds sync.Map // name -> *build

type build struct {
	once sync.Once
	path string
	err  error
}

// built builds otamq, otactl (go build) or otamq-agent (agent-c's
// Makefile) once per run and returns its path.
func built(t testing.TB, name string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(name, &build{})
	b := v.(*build)
	b.once.Do(func() {
		var cmd *exec.Cmd
		if name == "otamq-agent" {
			for _, tool := range []string{"make", "gcc"} {
				if _, err := exec.LookPath(tool); err != nil {
					b.err = fmt.Errorf("%s not found: run `make deps`", tool)
					return
				}
			}
			out := filepath.Join(suite.bin, "agent-c")
			b.path = filepath.Join(out, "otamq-agent")
			cmd = exec.Command("make", "-C", filepath.Join(repoRoot(), "agent-c"), "B="+out, b.path)
		} else {
			b.path = filepath.Join(suite.bin, name)
			cmd = exec.Command("go", "build", "-o", b.path, "./cmd/"+name)
			cmd.Dir = repoRoot()
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build %s: %v (libmosquitto-dev and libmbedtls-dev come from `make deps`)\n%s", name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// eventually polls cond until it returns nil, failing the test with cond's
// last error when within has passed.
func eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	delay := 20 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, 500*time.Millisecond)
	}
}
