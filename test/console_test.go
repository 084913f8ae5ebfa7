package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/otamq/otamq/cmd/devsim/sim"
	"github.com/otamq/otamq/httpapi"
	"github.com/otamq/otamq/ota/manifest"
)

// The operators' web console (package console) in a real headless
// Chromium (Debian's chromium, driven over the DevTools protocol by
// chromedp) against a real broker and simulated devices: an operator logs
// in, finds a device, uploads a release from the browser, plans and
// creates a rollout from pasted YAML, starts it, watches a wave's
// progress bar move with the live stream, sees the alarm, pauses it and
// finds the pause in the audit log. Each page is photographed (under
// $OTAMQ_CONSOLE_SHOTS when set, else the test's temporary folder), and
// every message the page writes to its console, every uncaught exception
// and every browser log entry fails the test, but for the API refusals
// the test provokes on purpose (the console shows those as messages).

// browser is a page of a headless Chromium and what it logged.
type browser struct {
	t     *testing.T
	ctx   context.Context
	base  string
	shots string

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
	// expected are the API paths whose refusal the test provokes: the
	// browser logs each refused request as a network error.
	expected map[string]bool
}

// newBrowser starts Chromium (it must be installed: `make deps`) on a
// fresh profile, with its console watched.
func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	exe := needCommand(t, "chromium")
	shots := os.Getenv("OTAMQ_CONSOLE_SHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		// A container has no user namespaces for Chromium's sandbox.
		chromedp.NoSandbox,
		chromedp.Flag("headless", "new"),
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: ctx, base: base, shots: shots, expected: map[string]bool{}}
	// Start the browser before subscribing: Console needs the target.
	if err := chromedp.Do(ctx); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("start chromium (%s): %v", exe, err)
	}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.messages = append(b.messages, m)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
		<-done
	})
	return b
}

// expect declares that the API refuses path (a refusal the test asks for).
func (b *browser) expect(path string) {
	b.mu.Lock()
	b.expected[path] = true
	b.mu.Unlock()
}

// errors are the page's console errors, warnings and exceptions, and the
// browser's error log entries, but for the refusals expected.
func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.messages {
		switch m.Type {
		case chromedp.ConsoleLog, chromedp.ConsoleDebug, chromedp.ConsoleInfo:
			continue
		}
		if m.Source == "network" && m.URL != "" {
			if u, err := url.Parse(m.URL); err == nil && b.expected[u.Path] {
				continue
			}
		}
		out = append(out, fmt.Sprintf("%s (%s %s:%d)", m, m.Source, m.URL, m.Line))
	}
	return out
}

func (b *browser) checkConsole() {
	b.t.Helper()
	if errs := b.errors(); len(errs) > 0 {
		b.t.Errorf("the page's console has %d error(s):\n%s", len(errs), strings.Join(errs, "\n"))
	}
}

// do runs actions, within d; what failed is named.
func (b *browser) do(what string, d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v\npage status: %s\nconsole: %v", what, err, b.statusText(), b.errors())
	}
}

// eval evaluates a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// statusText is what the console's status line says now.
func (b *browser) statusText() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("status").textContent`))
	return s
}

// waitJS polls expr (JavaScript giving a string) until check accepts it.
func (b *browser) waitJS(what string, within time.Duration, expr string, check func(string) error) string {
	b.t.Helper()
	var last string
	eventually(b.t, within, func() error {
		last = eval[string](b, expr)
		if err := check(last); err != nil {
			return fmt.Errorf("%s: %w (status: %q)", what, err, b.statusText())
		}
		return nil
	})
	return last
}

// shot writes a PNG of the whole page as name.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// shotViewport writes a PNG of what the viewport shows.
func (b *browser) shotViewport(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// open navigates within the page (the console routes with the fragment)
// and waits for the page's marker.
func (b *browser) open(fragment, ready string) {
	b.t.Helper()
	b.do("open "+fragment, 30*time.Second,
		// The same fragment again is no hashchange: the test asks for one.
		chromedp.Evaluate[chromedp.Void](`if (location.hash === `+jsString(fragment)+`) dispatchEvent(new HashChangeEvent("hashchange")); else location.hash = `+jsString(fragment)),
		chromedp.WaitVisible(chromedp.CSS(ready)),
		chromedp.WaitNotPresent(chromedp.CSS("#page[aria-busy]")))
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// confirm clicks a button that asks for confirmation, then confirms in
// the dialog (with a reason if given).
func (b *browser) confirm(button, reason string) {
	b.t.Helper()
	actions := []chromedp.Action[chromedp.Void]{chromedp.Click(chromedp.CSS(button)), chromedp.WaitVisible(chromedp.CSS("#confirm-ok"))}
	if reason != "" {
		actions = append(actions, chromedp.SendKeys(chromedp.CSS("#confirm-reason"), reason))
	}
	actions = append(actions, chromedp.Click(chromedp.CSS("#confirm-ok")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
	b.do("confirm "+button, 30*time.Second, actions...)
}

// TestConsole drives the console through an operator's tasks.
func TestConsole(t *testing.T) {
	t.Parallel()
	w := newRolloutWorld(t)
	specs, all := w.addFleet(t,
		fleetSpec{prefix: "con-canary-", n: 3, groups: []string{"canary"}, reg: func(r *sim.Registration) { r.Region = "eu" },
			dev: func(d *sim.DeviceSpec) {
				// One canary fails its health check on the new release:
				// the alarm.
				if strings.HasSuffix(d.ID, "-001") {
					d.Profile, d.FaultVersions = sim.BadHealth, []string{"1.1.0"}
				}
			}},
		fleetSpec{prefix: "con-field-", n: 8, reg: func(r *sim.Registration) { r.Region = "us" }},
		// A device of its own for a rollout that needs approval.
		fleetSpec{prefix: "con-spare-", n: 1, groups: []string{"spare"}, reg: func(r *sim.Registration) { r.Region = "ap" }},
	)
	w.simFleet(t, specs)
	w.waitBirths(t, all)
	b := newBrowser(t, w.apiBase())

	// Log in. Before, the console asks who its session is and is refused
	// (there is none): that 401 is expected.
	b.expect("/api/v1/session")
	b.do("load the console", 30*time.Second,
		chromedp.Navigate(b.base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")))
	b.do("log in", 30*time.Second,
		chromedp.SendKeys(chromedp.CSS("#login-id"), opID),
		chromedp.SendKeys(chromedp.CSS("#login-password"), opPassword),
		chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS("#stat-devices")))

	// Fleet: every device, online, by version.
	b.waitJS("fleet counts", 20*time.Second, `document.getElementById("stat-devices").textContent + "/" + document.getElementById("stat-online").textContent`,
		func(s string) error {
			if s != "12/12" {
				return fmt.Errorf("devices/online %s, want 12/12", s)
			}
			return nil
		})
	// The adoption curve: the fleet's one version, all 12 on it.
	if got := eval[string](b, `[...document.querySelectorAll("#fleet-adoption path.curve")].map(p => p.dataset.version).join(",") + " " + document.querySelector("#fleet-adoption figcaption").textContent`); !strings.HasPrefix(got, "1.0.0 1.0.0: 12 devices, the first since ") {
		t.Errorf("the fleet's adoption curve: %q", got)
	}
	if got := eval[string](b, `document.getElementById("me").textContent`); got != opID+" (operator)" {
		t.Errorf("logged in as %q", got)
	}
	b.do("the live stream opens", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#live[data-state="live"]`)))

	// The live stream: a registration reaches the open page. The delay is
	// from just before the admin call to the event's arrival in the page.
	var delays []time.Duration
	for i := range 5 {
		id := fmt.Sprintf("con-live-%d", i)
		t0 := time.Now()
		w.register(id, "device", "")
		got := b.waitJS("the registration reaches the feed", 20*time.Second,
			`(document.querySelector('#feed li[data-type="device.registered"][data-id="`+id+`"]') || {dataset: {}}).dataset.received || ""`,
			func(s string) error {
				if s == "" {
					return fmt.Errorf("no event yet")
				}
				return nil
			})
		var ms int64
		if _, err := fmt.Sscan(got, &ms); err != nil {
			t.Fatalf("received %q: %v", got, err)
		}
		delays = append(delays, time.UnixMilli(ms).Sub(t0))
	}
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	t.Logf("live stream: device/register to the event in the open console: median %v, max %v (%d samples)",
		delays[len(delays)/2], delays[len(delays)-1], len(delays))
	b.shot("fleet")

	// Devices: filter by region, then find one by its ID.
	b.open("#/devices?region=us", "#devices-table")
	rows := eval[int](b, `document.querySelectorAll("#devices-table tbody tr:not(.empty-row)").length`)
	if rows != 8 {
		t.Errorf("region us lists %d devices, want 8", rows)
	}
	b.shot("devices")
	b.do("find a device", 30*time.Second,
		chromedp.SendKeys(chromedp.CSS("#find-id"), "con-canary-002"),
		chromedp.Click(chromedp.CSS("#device-find button")),
		chromedp.WaitVisible(chromedp.CSS("#device-id")),
		chromedp.WaitVisible(chromedp.CSS("#timeline")))
	if got := eval[string](b, `document.getElementById("device-id").textContent`); got != "con-canary-002" {
		t.Errorf("device page of %q", got)
	}
	page := eval[string](b, `document.getElementById("page").innerText`)
	for _, want := range []string{"Firmware\n1.0.0", "Slot\n", "Boot reason\n", "Health\nhealthy"} {
		if !strings.Contains(page, want) {
			t.Errorf("device page lacks %q:\n%s", want, page)
		}
	}

	// Releases: upload from the browser, signed with the repo's manifest
	// package as the other tests do.
	fw := makeFirmware(t, w.key, "1.1.0", []string{"esp32-v2"}, 256*1024)
	// With an SBOM summary, which the release's page lists.
	fw.m.Components = []manifest.Component{{Name: "esp-idf", Version: "5.5.1", Digest: manifest.Digest{0xab, 31: 0xcd}},
		{Name: "mbedtls", Version: "3.6.2", Digest: manifest.Digest{0x12, 31: 0x34}}}
	signed, err := manifest.Sign(&fw.m, w.key)
	if err != nil {
		t.Fatal(err)
	}
	fw.signed = signed
	dir := t.TempDir()
	mPath, iPath := filepath.Join(dir, "firmware.manifest"), filepath.Join(dir, "firmware.bin")
	if err := os.WriteFile(mPath, fw.signed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(iPath, fw.image, 0o600); err != nil {
		t.Fatal(err)
	}
	b.open("#/releases", "#upload-form")
	b.do("upload a release", 60*time.Second,
		chromedp.SetUploadFiles(chromedp.CSS("#upload-manifest"), []string{mPath}),
		chromedp.SetUploadFiles(chromedp.CSS("#upload-image"), []string{iPath}),
		chromedp.Click(chromedp.CSS("#upload-form button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#uploaded-release")))
	relID := eval[string](b, `document.getElementById("uploaded-release").textContent`)
	if p := eval[string](b, `document.getElementById("upload-percent").textContent + " " + document.getElementById("upload-progress").value`); p != "100% 100" {
		t.Errorf("upload progress at the end: %q", p)
	}
	var rel struct {
		Release struct {
			Version string `json:"version"`
			Digest  string `json:"digest"`
		} `json:"release"`
	}
	api := w.apiLogin(opID, opPassword)
	api.ok("GET", "/api/v1/releases/"+url.PathEscape(relID), nil, &rel)
	if rel.Release.Version != "1.1.0" || rel.Release.Digest != fw.m.ImageDigest.String() {
		t.Fatalf("uploaded %s: %+v, want version 1.1.0 digest %s", relID, rel.Release, fw.m.ImageDigest)
	}
	b.open("#/releases", "#keys-table")
	if n := eval[int](b, `document.querySelectorAll("#releases-table tbody tr:not(.empty-row)").length + 100*document.querySelectorAll("#keys-table tbody tr:not(.empty-row)").length`); n != 101 {
		t.Errorf("releases + 100*keys listed: %d, want 101", n)
	}
	b.shot("releases")
	b.open("#/releases/"+url.PathEscape(relID), "#sbom-table")
	if got := eval[string](b, `[...document.querySelectorAll("#sbom-table tbody tr")].map(r => [...r.cells].map(c => c.textContent).join(" ")).join("; ")`); got !=
		"esp-idf 5.5.1 "+fw.m.Components[0].Digest.String()+"; mbedtls 3.6.2 "+fw.m.Components[1].Digest.String() {
		t.Errorf("the release's SBOM components: %q", got)
	}
	b.shot("release")

	// Rollouts: the form writes the YAML; a bad spec shows the API's
	// message; then a pasted spec is planned (nothing created) and created.
	b.open("#/rollouts?release="+url.QueryEscape(relID), "#rollout-form")
	b.do("fill the form", 30*time.Second, chromedp.SendKeys(chromedp.CSS("#ro-id"), "con-form"), chromedp.SendKeys(chromedp.CSS("#ro-named"), "canary"))
	if y := eval[string](b, `document.getElementById("rollout-yaml").value`); !strings.Contains(y, `id: "con-form"`) ||
		!strings.Contains(y, `release: "`+relID+`"`) || !strings.Contains(y, `- {name: "canary", groups: ["canary"]}`) {
		t.Errorf("the form wrote:\n%s", y)
	}
	b.expect("/api/v1/rollouts/plan")
	b.do("plan a bad spec", 30*time.Second,
		chromedp.SetValue(chromedp.CSS("#rollout-yaml"), "release: "+relID+"\nwaves: []\nbogus: 1\n"),
		chromedp.Click(chromedp.CSS("#ro-plan")),
		chromedp.WaitVisible(chromedp.CSS(`#status [data-kind="error"]`)))
	if s := b.statusText(); !strings.Contains(s, "Plan refused") || !strings.Contains(s, "bogus") {
		t.Errorf("a refused plan shows %q", s)
	}
	const spec = `id: con-1
release: %s
selector: {region: [eu, us]}
waves:
  - {name: canary, groups: [canary]}
  - {percent: [100]}
success: 60%%
bake: 1s
probation: 1s
rate: {in_flight: 1}
thresholds:
  health: {warn: 10%%, pause: 50%%}
  rollback: {warn: 10%%, pause: 50%%}
`
	b.do("plan", 30*time.Second,
		chromedp.SetValue(chromedp.CSS("#rollout-yaml"), fmt.Sprintf(spec, relID)),
		chromedp.Click(chromedp.CSS("#ro-plan")),
		chromedp.WaitVisible(chromedp.CSS("#plan-waves")))
	planned := eval[string](b, `[...document.querySelectorAll("#plan-waves tbody tr")].map(r => r.cells[0].textContent + ":" + r.cells[1].textContent).join(" ")`)
	if planned != "canary:3 100%:8" {
		t.Errorf("plan waves %q, want canary:3 100%%:8", planned)
	}
	var list struct {
		Rollouts []json.RawMessage `json:"rollouts"`
	}
	api.ok("GET", "/api/v1/rollouts", nil, &list)
	if len(list.Rollouts) != 0 {
		t.Fatalf("the plan created %d rollouts", len(list.Rollouts))
	}
	b.shot("rollout-plan")
	b.do("create", 30*time.Second,
		chromedp.Click(chromedp.CSS("#ro-create")),
		chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="draft"]`)))
	if s := b.statusText(); !strings.Contains(s, "Created rollout con-1 (draft)") {
		t.Errorf("create shows %q", s)
	}

	// Start, with confirmation; watch the 100% wave's bar move live (the
	// page is not reloaded: each value comes from the event stream).
	b.confirm("#ro-start", "")
	b.do("started", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="running"]`)))
	b.evalMark()
	bar := `(document.querySelector('.wave[data-wave="100%"] [role=progressbar]') || {}).ariaValueNow || ""`
	var seen []string
	b.waitJS("the 100% wave's progress moves", 90*time.Second, bar, func(s string) error {
		if s != "" && (len(seen) == 0 || seen[len(seen)-1] != s) {
			seen = append(seen, s)
		}
		if slices.Contains(seen, "0") && len(seen) >= 3 {
			return nil
		}
		return fmt.Errorf("values seen %v", seen)
	})
	if !b.markKept() {
		t.Errorf("the page was reloaded while the bar moved")
	}
	t.Logf("the 100%% wave's bar showed %v succeeded", seen)
	b.waitJS("the alarm", 30*time.Second, `document.getElementById("rollout-alarms").innerText`, func(s string) error {
		if !strings.Contains(s, "warn") || !strings.Contains(s, "canary") {
			return fmt.Errorf("alarms %q", s)
		}
		return nil
	})

	// Pause, with a reason: the paused state and the alarm stay on screen.
	b.confirm("#ro-pause", "console test")
	b.do("paused", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="paused"]`)))
	if s := b.statusText(); !strings.Contains(s, "is paused") {
		t.Errorf("pause shows %q", s)
	}
	if n := eval[int](b, `document.querySelectorAll("#rollout-alarms tr.alarm-warn").length`); n == 0 {
		t.Errorf("no alarm highlighted after the pause")
	}
	var v roView
	api.ok("GET", "/api/v1/rollouts/con-1", nil, &v)
	if v.State != "paused" || v.PausedBy != "operator" || len(v.Alarms) == 0 {
		t.Errorf("the broker has con-1 %s by %q with %d alarms", v.State, v.PausedBy, len(v.Alarms))
	}
	b.waitJS("the device table", 20*time.Second, `String(document.querySelectorAll("#rollout-devices tbody tr[data-state]").length)`, func(s string) error {
		if s != "11" {
			return fmt.Errorf("%s rows", s)
		}
		return nil
	})
	b.shot("rollout")

	// A cancelled confirmation does nothing; resume and pause again.
	b.do("cancel a resume", 30*time.Second,
		chromedp.Click(chromedp.CSS("#ro-resume")),
		chromedp.WaitVisible(chromedp.CSS("#confirm-ok")),
		chromedp.KeyEvent(kb.Escape),
		chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
	api.ok("GET", "/api/v1/rollouts/con-1", nil, &v)
	if v.State != "paused" || eval[string](b, `document.getElementById("rollout-state").dataset.state`) != "paused" {
		t.Errorf("after a cancelled resume con-1 is %s", v.State)
	}
	b.confirm("#ro-resume", "")
	b.do("resumed", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="running"]`)))
	b.confirm("#ro-pause", "console test")
	b.do("paused again", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="paused"]`)))

	// The rollout page on a phone, in dark mode.
	b.open("#/rollouts/con-1", `#rollout-state[data-state="paused"]`)
	b.do("phone, dark", 30*time.Second,
		chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
				Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
			return err
		}))
	if bg := eval[string](b, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(15, 18, 22)" {
		t.Errorf("dark mode background %s", bg)
	}
	if wide := eval[bool](b, `document.documentElement.scrollWidth > window.innerWidth + 1`); wide {
		t.Errorf("the rollout page is wider than a phone: %d px", eval[int](b, `document.documentElement.scrollWidth`))
	}
	b.do("scroll to the alarms", 10*time.Second, chromedp.ScrollIntoView(chromedp.CSS("#rollout-alarms")))
	b.shotViewport("rollout-phone-dark")
	b.do("laptop, light", 30*time.Second,
		chromedp.EmulateViewport(1280, 900),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{})
			return err
		}))

	// The device page of a device that took part: its timeline has the
	// rollout's offer and its update events.
	b.open("#/devices/con-canary-002", "#timeline")
	tl := eval[string](b, `document.getElementById("timeline").innerText`)
	if !strings.Contains(tl, "con-1") || !strings.Contains(tl, "1.1.0") {
		t.Errorf("con-canary-002's timeline does not show the rollout:\n%s", tl)
	}
	b.shot("device")

	// The audit log, filtered: the pause, by this operator, over HTTP.
	b.open("#/audit?action=rollout/pause", "#audit-table")
	got := eval[string](b, `[...document.querySelectorAll("#audit-table tbody tr")].map(r => r.cells[2].textContent + " " + r.cells[3].textContent + " " + r.cells[4].textContent).join("; ")`)
	if got != "ops (operator) rollout/pause con-1; ops (operator) rollout/pause con-1" {
		t.Errorf("audit rows %q", got)
	}
	b.shot("audit")

	// A reload keeps the session (the cookie; the CSRF token comes back
	// from GET /api/v1/session); logging out ends it.
	b.do("reload", 30*time.Second, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#audit-table")))
	b.do("log out", 30*time.Second, chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	if s := b.statusText(); !strings.Contains(s, "Logged out") {
		t.Errorf("logout shows %q", s)
	}

	// A rollout that needs approval: its creator is refused (the API's
	// message is shown, the state stays), another operator approves.
	w.create(t, "id: con-2\nrelease: "+relID+"\nselector: {groups: [spare]}\nwaves:\n  - {percent: [100]}\napproval: true\n")
	w.addOperator("con-ops2", "operator", "second operator password")
	b.do("log in again", 30*time.Second,
		// SetValue: the browser may fill in the ID it saw last.
		chromedp.SetValue(chromedp.CSS("#login-id"), opID),
		chromedp.SetValue(chromedp.CSS("#login-password"), opPassword),
		chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS("#nav")))
	b.open("#/rollouts/con-2", `#rollout-state[data-state="awaiting_approval"]`)
	b.expect("/api/v1/rollouts/con-2/approve")
	b.confirm("#ro-approve", "")
	b.do("approval refused", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#status [data-kind="error"]`)))
	if s := b.statusText(); !strings.Contains(s, "Approve refused") || !strings.Contains(s, "another operator must approve") {
		t.Errorf("the creator's approval shows %q", s)
	}
	if st := eval[string](b, `document.getElementById("rollout-state").dataset.state`); st != "awaiting_approval" {
		t.Errorf("after a refused approval the page shows %s", st)
	}
	b.do("log out", 30*time.Second, chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	b.do("log in as another operator", 30*time.Second,
		// SetValue: the browser may fill in the ID it saw last.
		chromedp.SetValue(chromedp.CSS("#login-id"), "con-ops2"),
		chromedp.SetValue(chromedp.CSS("#login-password"), "second operator password"),
		chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="awaiting_approval"]`)))
	b.confirm("#ro-approve", "")
	b.do("approved", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="draft"]`)))
	api.ok("GET", "/api/v1/rollouts/con-2", nil, &v)
	if v.State != "draft" || v.Approved == nil || v.Approved.By != "con-ops2" {
		t.Errorf("the broker has con-2 %s, approved %+v", v.State, v.Approved)
	}
	b.confirm("#ro-abort", "not needed")
	b.do("aborted", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(`#rollout-state[data-state="aborted"]`)))
	if n := eval[int](b, `document.querySelectorAll("#rollout-actions button").length`); n != 0 {
		t.Errorf("an aborted rollout offers %d actions", n)
	}
	api.ok("GET", "/api/v1/rollouts/con-2", nil, &v)
	if v.State != "aborted" {
		t.Errorf("the broker has con-2 %s after the abort", v.State)
	}
	b.do("log out", 30*time.Second, chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login-form")))

	// An observer reads, and is offered no action.
	w.addOperator("con-viewer", "observer", "observer password for tests")
	b.do("log in as an observer", 30*time.Second,
		// SetValue: the browser may fill in the ID it saw last.
		chromedp.SetValue(chromedp.CSS("#login-id"), "con-viewer"),
		chromedp.SetValue(chromedp.CSS("#login-password"), "observer password for tests"),
		chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS("#nav")))
	if got := eval[string](b, `document.getElementById("me").textContent`); got != "con-viewer (observer)" {
		t.Errorf("logged in as %q", got)
	}
	b.open("#/rollouts/con-1", "#rollout-actions")
	if s := eval[string](b, `document.getElementById("rollout-actions").innerText + "|" + document.querySelectorAll("#rollout-actions button").length`); s != "Observers read only.|0" {
		t.Errorf("an observer's rollout actions: %q", s)
	}
	b.open("#/releases", "#keys-table")
	if n := eval[int](b, `document.querySelectorAll("#upload-form, #key-form, #keys-table button").length`); n != 0 {
		t.Errorf("an observer is offered %d release or key forms and buttons", n)
	}
	b.checkConsole()
}

// evalMark sets a mark on the window, which a reload would remove.
func (b *browser) evalMark() { _ = eval[bool](b, `window.__otamqMark = true`) }

func (b *browser) markKept() bool { return eval[bool](b, `window.__otamqMark === true`) }

// TestConsoleStreamLimit: when the broker refuses the console's event
// stream (the operator has httpapi.MaxStreamsPerOperator open elsewhere),
// the page says it is not live and tries again; once a stream is free it
// is live again, without a reload.
func TestConsoleStreamLimit(t *testing.T) {
	t.Parallel()
	w := startBroker(t)
	api := w.apiLogin(opID, opPassword)
	var open []io.Closer
	closeOne := func() {
		_ = open[len(open)-1].Close()
		open = open[:len(open)-1]
	}
	t.Cleanup(func() {
		for len(open) > 0 {
			closeOne()
		}
	})
	for range httpapi.MaxStreamsPerOperator {
		req, err := http.NewRequest("GET", w.apiBase()+"/api/v1/events", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+api.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("stream %d: %s", len(open), resp.Status)
		}
		// The stream is registered once its first comment is written.
		if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}

	b := newBrowser(t, w.apiBase())
	b.expect("/api/v1/session")
	b.expect("/api/v1/events")
	b.do("log in", 30*time.Second,
		chromedp.Navigate(b.base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		chromedp.SendKeys(chromedp.CSS("#login-id"), opID),
		chromedp.SendKeys(chromedp.CSS("#login-password"), opPassword),
		chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS("#stat-devices")))
	b.waitJS("the refused stream", 30*time.Second, `document.getElementById("live").dataset.state || ""`, func(s string) error {
		if s != "closed" {
			return fmt.Errorf("stream state %q, want closed", s)
		}
		return nil
	})
	closeOne()
	b.waitJS("the stream opened again", 60*time.Second, `document.getElementById("live").dataset.state || ""`, func(s string) error {
		if s != "live" {
			return fmt.Errorf("stream state %q, want live", s)
		}
		return nil
	})
	// And it carries events.
	w.register("con-limit-1", "device", "")
	b.waitJS("an event after the retry", 20*time.Second, `String(document.querySelectorAll('#feed li[data-id="con-limit-1"]').length)`, func(s string) error {
		if s == "0" {
			return fmt.Errorf("no event in the feed")
		}
		return nil
	})
	b.checkConsole()
}
