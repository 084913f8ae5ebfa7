package test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestAgentUTCOffset: otamq-agent --utc-offset MINUTES is the UTC offset
// of its birth (key 10), as the broker then shows it (device/get); the
// limits of the contract, ±14 h, are accepted and a value past them, or
// not a number, is refused at start with exit code 1 and the flag named.
func TestAgentUTCOffset(t *testing.T) {
	t.Parallel()
	w := newAgentWorld(t)
	for i, minutes := range []int{-330, 840, -840} {
		id := fmt.Sprintf("dev-utc-%d", i)
		w.agent(t, id, "--utc-offset", fmt.Sprint(minutes))
		eventually(t, 20*time.Second, func() error {
			if got := w.status(id).UTCOffsetMinutes; int(got) != minutes {
				return fmt.Errorf("%s: the broker shows UTC offset %d, the agent was given %d", id, got, minutes)
			}
			return nil
		})
	}
	// without the flag: 0
	w.agent(t, "dev-utc-none")
	if got := w.status("dev-utc-none").UTCOffsetMinutes; got != 0 {
		t.Errorf("no --utc-offset: the broker shows %d", got)
	}
	for _, bad := range []string{"841", "-841", "60x", "", "99999999999999999999"} {
		cmd := exec.Command(agentBinary(t), "--broker", w.url(), "--id", "dev-bad", "--key", w.keyFile,
			"--data-dir", t.TempDir(), "--utc-offset", bad)
		out, err := cmd.CombinedOutput()
		if x, ok := err.(*exec.ExitError); !ok || x.ExitCode() != 1 || !strings.Contains(string(out), "--utc-offset") {
			t.Errorf("--utc-offset %q: %v, output %q; want exit 1 naming the flag", bad, err, out)
		}
	}
}
