package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The alert rules pass Prometheus' own checks: `promtool check rules` (they
// parse, every expression is valid PromQL) and `promtool test rules` on
// config/prometheus/alerts_test.yml (each alarm fires on the series that
// should fire it, and not on those at and under its threshold, its
// minimum sample and its `for`).
func TestAlertRulesPromtool(t *testing.T) {
	t.Parallel()
	promtool := needCommand(t, "promtool")
	dir := filepath.Join(repoRoot(), "config", "prometheus")
	run := func(dir string, args ...string) (string, error) {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(dir, "check", "rules", "alerts.yml"); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if out, err := run(dir, "test", "rules", "alerts_test.yml"); err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}

	// The unit tests see a wrong threshold: the same tests on a copy of
	// the rules whose critical rollback rate is 50 % fail.
	rules, err := os.ReadFile(filepath.Join(dir, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(dir, "alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	const critical = "expr: rollout_wave:otamq_rollout_rollback_ratio > 0.05"
	if strings.Count(string(rules), critical) != 1 {
		t.Fatalf("alerts.yml has no rule %q", critical)
	}
	tmp := t.TempDir()
	wrong := strings.Replace(string(rules), critical, "expr: rollout_wave:otamq_rollout_rollback_ratio > 0.5", 1)
	if err := os.WriteFile(filepath.Join(tmp, "alerts.yml"), []byte(wrong), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "alerts_test.yml"), tests, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(tmp, "test", "rules", "alerts_test.yml")
	if err == nil || !strings.Contains(out, "OtamqRolloutRollbackRate") {
		t.Fatalf("promtool test rules passed rules with a critical rollback rate of 50 %%: %v\n%s", err, out)
	}
}
