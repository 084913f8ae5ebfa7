package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRenderOnlyWhatRan: the page holds the figures of the results and
// nothing else; a scenario without a result is "not run", a failed one
// "FAILED".
func TestRenderOnlyWhatRan(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 12, 1, 14, 0, 0, 0, time.UTC)
	for _, r := range []Result{
		{Scenario: 1, Test: "TestHappyPath", Mode: "long", Seed: 7, Passed: true, Started: at, Seconds: 41,
			Checked: []string{"every agent committed"}, Figures: []Figure{{"agents", "20"}, {"a|b", "3 s"}}},
		{Scenario: 2, Test: "TestCrashOnBoot", Mode: "long", Seed: 7, Passed: false, Started: at, Seconds: 12,
			Injected: "an image that crashes at boot"},
	} {
		if err := Write(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := Render(&b, rs); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{
		"| 1 | [Happy path](#1-happy-path) | passed | long | 7 | 2026-12-01 14:00 UTC, 41 s |",
		"| 2 | [Firmware that crashes on boot](#2-firmware-that-crashes-on-boot) | FAILED |",
		"| 3 | Firmware that fails its health check, and failure after confirmation | not run |",
		"| 10 | Scale and soak | not run |",
		"| agents | 20 |", `| a\|b | 3 s |`, "- every agent committed",
		"**Injected.** an image that crashes at boot",
		"**Injected.** nothing",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "## 3.") {
		t.Errorf("a section for a scenario that did not run:\n%s", page)
	}
}

// TestLoadRefusesWhatItCannotRead: a result that does not parse or sits
// under another scenario's name stops the rendering (nothing guessed).
func TestLoadRefusesWhatItCannotRead(t *testing.T) {
	for name, body := range map[string]string{
		"scenario-01.json": "{not json",
		"scenario-02.json": `{"scenario": 3}`,
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(dir); err == nil {
			t.Errorf("%s %q loaded", name, body)
		}
	}
	if err := Write(t.TempDir(), Result{Scenario: 11}); err == nil {
		t.Error("a result for scenario 11 was written")
	}
	rs, err := Load(t.TempDir())
	if err != nil || len(rs) != 0 {
		t.Errorf("empty directory: %v %v", rs, err)
	}
}
