package stackstart

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The test binary plays the program: with STACKSTART_CHILD set, TestMain
// calls Ensure and prints its PID and GODEBUG.
func TestMain(m *testing.M) {
	if os.Getenv("STACKSTART_CHILD") != "" {
		Ensure()
		fmt.Printf("pid=%d GODEBUG=%s args=%s\n", os.Getpid(), os.Getenv("GODEBUG"), strings.Join(os.Args[1:], " "))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestEnsure(t *testing.T) {
	for _, c := range []struct{ godebug, want string }{
		{"", "GODEBUG=" + Setting},
		{"madvdontneed=1", "GODEBUG=madvdontneed=1," + Setting},
		{"adaptivestackstart=1", "GODEBUG=adaptivestackstart=1"}, // the operator's choice stands
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^$", "extra-arg")
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GODEBUG=") {
				env = append(env, kv)
			}
		}
		cmd.Env = append(env, "STACKSTART_CHILD=1", "GODEBUG="+c.godebug)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GODEBUG=%q: %v", c.godebug, err)
		}
		got := strings.TrimSpace(string(out))
		want := fmt.Sprintf("pid=%d %s args=-test.run=^$ extra-arg", cmd.Process.Pid, c.want)
		if got != want {
			t.Errorf("GODEBUG=%q: the program said %q, want %q (same process, same arguments)", c.godebug, got, want)
		}
	}
}
