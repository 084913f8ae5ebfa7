package rollout

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// gateways registers gateways and, under each, its children, connects the
// gateways and relays each child's birth on 1.0.0.
func (e *env) gateways(children map[string][]string) {
	e.t.Helper()
	e.update(func(tx store.Tx) error {
		for gw, kids := range children {
			if _, err := e.reg.Register(tx, fleet.Registration{ID: gw, Role: fleet.RoleGateway,
				Attributes: fleet.Attributes{Hardware: "gw-linux"}}, fleet.TokenSecret("x"), "t"); err != nil {
				return err
			}
			for _, k := range kids {
				if _, err := e.reg.Register(tx, fleet.Registration{ID: k, Attributes: fleet.Attributes{Hardware: "esp32-v2",
					Parent: gw}}, fleet.TokenSecret("x"), "t"); err != nil {
					return err
				}
			}
		}
		return nil
	})
	for gw, kids := range children {
		e.connect(gw)
		for _, k := range kids {
			e.reg.Relayed(k, gw)
			e.birth(k, "1.0.0", wire.BootPowerOn, wire.StateIdle, 0, 0)
		}
	}
}

// relayedUpdate takes child through its offer to health ok, every message
// relayed by gw (the child's reboot is no disconnect the broker sees).
func (e *env) relayedUpdate(child, gw string) {
	e.t.Helper()
	for _, c := range []wire.EventCode{wire.EvDownloadStarted, wire.EvDownloadCompleted, wire.EvInstallStarted, wire.EvRebootStarted} {
		e.reg.Relayed(child, gw)
		e.event(child, c, 0)
	}
	e.reg.Relayed(child, gw)
	e.birth(child, e.target(child), wire.BootOTAReboot, wire.StateTrial, 0, 0)
	e.event(child, wire.EvRebootCompleted, 0)
	e.heartbeat(child, wire.HealthAllOK, wire.StateCommitted)
	e.event(child, wire.EvHealthOK, 0)
}

// TestGatewayChildrenUnreachable: children cut off by their gateway's
// disconnect wait instead of failing by silence. Once their gateway is
// back, a child it relays again succeeds, and one it does not is silent
// from the gateway's return; a child whose gateway never returns times out
// at its deadline, which is no health failure.
func TestGatewayChildrenUnreachable(t *testing.T) {
	e := newEnv(t)
	e.gateways(map[string][]string{"gw-a": {"a-1", "a-2"}, "gw-b": {"b-1"}})
	e.release("1.1.0", 0, "esp32-v2")
	e.create(`
id: r-gw
release: 1.1.0
selector: {hardware: [esp32-v2]}
waves: [{percent: [100]}]
probation: 1m
silence: 5m
deadline: 2h
thresholds: {min_sample: 1, health: {warn: 50%, pause: 90%}}
`)
	e.start("r-gw")
	e.pass()
	if got := e.states("r-gw"); len(got) != 3 || got["a-1"] != "offered" || got["b-1"] != "offered" {
		t.Fatalf("children %v, want each its own device, offered", got)
	}
	e.relayedUpdate("a-1", "gw-a")
	e.relayedUpdate("a-2", "gw-a")
	e.relayedUpdate("b-1", "gw-b")
	e.pass()

	// Both gateways' links go down while their children are in trial.
	e.disconnect("gw-a")
	e.disconnect("gw-b")
	e.advance(30*time.Minute, time.Minute)
	for id, st := range e.states("r-gw") {
		d := e.device("r-gw", id)
		if st != "trial" || !d.Unreachable || !strings.Contains(d.Reason, "unreachable: its gateway") {
			t.Fatalf("%s: %+v while its gateway is offline", id, d)
		}
	}
	v := e.get("r-gw")
	if v.Unreachable != 3 || len(v.Gateways) != 2 || v.Gateways[0].Gateway != "gw-a" || v.Gateways[0].Devices != 2 ||
		v.Gateways[0].Unreachable != 2 || v.Gateways[0].Online || v.Gateways[1].Gateway != "gw-b" {
		t.Fatalf("view: unreachable %d, gateways %+v", v.Unreachable, v.Gateways)
	}

	// gw-a is back and relays a-1, not a-2.
	e.connect("gw-a")
	e.reg.Relayed("a-1", "gw-a")
	e.heartbeat("a-1", wire.HealthAllOK, wire.StateCommitted)
	e.advance(4*time.Minute, time.Minute)
	if st := e.states("r-gw"); st["a-1"] != "succeeded" || st["a-2"] != "trial" {
		t.Fatalf("4 minutes after gw-a's return: %v", st)
	}
	if d := e.device("r-gw", "a-2"); d.Unreachable {
		t.Fatalf("a-2 still unreachable with its gateway online: %+v", d)
	}
	e.advance(2*time.Minute, time.Minute)
	a2 := e.device("r-gw", "a-2")
	if a2.State != "failed" || !a2.Health || !strings.Contains(a2.Reason, "gw-a's return") {
		t.Fatalf("a-2, silent after its gateway came back: %+v", a2)
	}

	// b-1 waits for gw-b up to its deadline: timed out, no health failure.
	if d := e.device("r-gw", "b-1"); d.State != "trial" {
		t.Fatalf("b-1 before its deadline: %+v", d)
	}
	e.advance(95*time.Minute, 5*time.Minute)
	b1 := e.device("r-gw", "b-1")
	if b1.State != "timed_out" || b1.Health || !strings.Contains(b1.Reason, "its gateway gw-b is offline") {
		t.Fatalf("b-1 at its deadline: %+v", b1)
	}
	if n := e.get("r-gw").Waves[0].HealthFailures; n != 1 {
		t.Fatalf("health failures %d, want a-2's only", n)
	}
}

// TestGatewayViewsBounded: rollout/get lists at most MaxGatewayViews
// gateways, those with the most children first, and counts the rest.
func TestGatewayViewsBounded(t *testing.T) {
	e := newEnv(t)
	kids := map[string][]string{}
	for i := range MaxGatewayViews + 2 {
		gw := fmt.Sprintf("gw-%03d", i)
		kids[gw] = []string{gw + "-a"}
	}
	kids["gw-000"] = append(kids["gw-000"], "gw-000-b")
	e.gateways(kids)
	e.release("1.1.0", 0, "esp32-v2")
	e.create(`
id: r-many
release: 1.1.0
selector: {hardware: [esp32-v2]}
waves: [{percent: [100]}]
`)
	v := e.get("r-many")
	if v.Devices != MaxGatewayViews+3 || len(v.Gateways) != MaxGatewayViews || v.MoreGateways != 2 {
		t.Fatalf("%d devices, %d gateways listed, %d more", v.Devices, len(v.Gateways), v.MoreGateways)
	}
	if g := v.Gateways[0]; g.Gateway != "gw-000" || g.Devices != 2 || !g.Online || g.Counts["eligible"] != 2 {
		t.Fatalf("first gateway %+v", g)
	}
	if g := v.Gateways[1]; g.Gateway != "gw-001" || g.Devices != 1 {
		t.Fatalf("second gateway %+v", g)
	}
}
