package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/otamq/otamq/test/e2e/report"
)

// record collects what scenario n checked and measured; when the test ends
// it is written to OTAMQ_E2E_RESULTS (if set) with the test's outcome, so
// that the page shows a failed run as failed.
type record struct {
	t    *testing.T
	r    report.Result
	done bool
}

func newRecord(t *testing.T, n int, setup, injected string) *record {
	rec := &record{t: t, r: report.Result{Scenario: n, Title: report.Scenarios[n], Test: t.Name(), Mode: mode(),
		Seed: suite.seed, Started: time.Now().UTC(), Setup: setup, Injected: injected}}
	t.Logf("scenario %d (%s), %s version, seed %d", n, report.Scenarios[n], mode(), suite.seed)
	t.Cleanup(rec.finish)
	return rec
}

// finish ends the scenario: passed unless the test failed by now. A
// scenario that shares its test with a later one finishes before the
// later one starts; the others finish when the test ends.
func (r *record) finish() {
	if r.done {
		return
	}
	r.done = true
	r.r.Passed = !r.t.Failed()
	r.r.Seconds = time.Since(r.r.Started).Seconds()
	for _, f := range r.r.Figures {
		r.t.Logf("measured: %s: %s", f.Name, f.Value)
	}
	if suite.results == "" {
		return
	}
	if err := report.Write(suite.results, r.r); err != nil {
		r.t.Error(err)
	}
}

// checked notes a check that held (call it after the check).
func (r *record) checked(format string, args ...any) {
	r.r.Checked = append(r.r.Checked, fmt.Sprintf(format, args...))
}

// figure notes a measured value.
func (r *record) figure(name, format string, args ...any) {
	r.r.Figures = append(r.r.Figures, report.Figure{Name: name, Value: fmt.Sprintf(format, args...)})
}

// durations notes the median and the largest of ds.
func (r *record) durations(name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	r.figure(name, "median %.1f s, max %.1f s (%d agents)", s[len(s)/2].Seconds(), s[len(s)-1].Seconds(), len(s))
}
