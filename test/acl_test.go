package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/ota/wire"
)

// The ACL matrix: two devices, a gateway with a child, an operator and an
// observer; every allowed case must work and every refused one must really
// be refused, checked by reason code where MQTT v5 has one, and by the
// absence of delivery or of any effect on the registry everywhere.

const obID, obPassword = "olga", "observer password for tests"

// fleetSetup registers the matrix's clients and returns their tokens.
func fleetSetup(b *tb) map[string]string {
	tok := map[string]string{
		"d1": b.register("d1", "device", ""),
		"d2": b.register("d2", "device", ""),
		"gw": b.register("gw", "gateway", ""),
	}
	tok["c1"] = b.register("c1", "device", "gw")
	b.addOperator(obID, "observer", obPassword)
	tok[opID], tok[obID] = opPassword, obPassword
	return tok
}

var (
	birthPayload = wire.Birth{FirmwareVersion: "1.0.0", Hardware: "esp32-v2", Bootloader: "2.0.0", AgentVersion: "0.1.0"}.Encode()
	hbPayload    = wire.Heartbeat{UptimeSeconds: 5, HealthFlags: wire.HealthAllOK, RSSI: -50}.Encode()
	evPayload    = wire.Event{Code: wire.EvCheckStarted}.Encode()
	getPayload   = wire.BlockRequest{Digest: make([]byte, 32), Size: 1024, Count: 1, RequestID: 1}.Encode()
)

// payloadFor returns a valid payload for a device topic, so that only the
// ACL decides.
func payloadFor(topic string) []byte {
	switch {
	case strings.HasSuffix(topic, "/birth"):
		return birthPayload
	case strings.HasSuffix(topic, "/hb"):
		return hbPayload
	case strings.HasSuffix(topic, "/ev"):
		return evPayload
	case strings.HasSuffix(topic, "/ota/get"):
		return getPayload
	}
	return []byte("x")
}

type pubCase struct {
	who, topic string
	allow      bool
}

var pubCases = []pubCase{
	{"d1", "dm/d1/birth", true},
	{"d1", "dm/d1/hb", true},
	{"d1", "dm/d1/ev", true},
	{"d1", "dm/d1/ota/get", true},
	{"d1", "telemetry/d1/temp", true},
	{"d1", "dm/d2/hb", false},
	{"d1", "dm/d2/birth", false},
	{"d1", "dm/d1/cmd", false},
	{"d1", "dm/d1/ota/manifest", false},
	{"d1", "dm/d1/ota/blk", false},
	{"d1", "dm/d1/other", false},
	{"d1", "dm/fleet/events", false},
	{"d1", "dm/admin/device/list", false},
	{"d1", "dm/admin/reply/ops/x", false},
	{"d1", "telemetry/d2/temp", false},
	{"d1", "elsewhere/topic", false},
	{"gw", "dm/gw/hb", true},
	{"gw", "dm/c1/hb", true},
	{"gw", "dm/c1/birth", true},
	{"gw", "dm/d1/hb", false},
	{"gw", "dm/c1/cmd", false},
	{"c1", "dm/c1/hb", true},
	{"c1", "dm/gw/hb", false},
	{"ops", "dm/d1/cmd", false},
	{"ops", "dm/d1/hb", false},
	{"ops", "dm/fleet/events", false},
	{"ops", "dm/admin/reply/ops/x", false},
	{"ops", "telemetry/ops/temp", false},
	{"olga", "dm/admin/device/register", false},
	{"olga", "dm/d1/cmd", false},
}

// adminPubCases need MQTT v5 (a response topic).
var adminPubCases = []pubCase{
	{"ops", "dm/admin/device/list", true},
	{"ops", "dm/admin/audit/list", true},
	{"olga", "dm/admin/device/list", true},
	{"olga", "dm/admin/audit/list", true},
	{"olga", "dm/admin/device/revoke", false},
}

type subCase struct {
	who, filter string
	allow       bool
	// deliver is a topic the server publishes to show delivery (or its
	// absence).
	deliver string
}

var subCases = []subCase{
	{"d1", "dm/d1/ota/manifest", true, "dm/d1/ota/manifest"},
	{"d1", "dm/d1/ota/blk", true, "dm/d1/ota/blk"},
	{"d1", "dm/d1/cmd", true, "dm/d1/cmd"},
	{"d1", "dm/d2/cmd", false, "dm/d2/cmd"},
	{"d1", "dm/d1/birth", false, "dm/d1/birth"},
	{"d1", "dm/d1/#", false, "dm/d1/hb"},
	{"d1", "dm/d1/ota/+", false, "dm/d1/ota/get"},
	{"d1", "dm/+/cmd", false, "dm/d2/cmd"},
	{"d1", "#", false, "elsewhere/topic"},
	{"d1", "+/d2/ota/blk", false, "dm/d2/ota/blk"},
	{"d1", "dm/fleet/events", false, "dm/fleet/events"},
	{"d1", "dm/admin/reply/ops/#", false, "dm/admin/reply/ops/z"},
	{"d1", "$SYS/#", false, "$SYS/test"},
	{"d1", "telemetry/#", false, "telemetry/d2/temp"},
	{"d1", "$share/g/dm/d1/ota/manifest", false, "dm/d1/ota/manifest"},
	{"gw", "dm/gw/cmd", true, "dm/gw/cmd"},
	{"gw", "dm/c1/cmd", true, "dm/c1/cmd"},
	{"gw", "dm/c1/ota/blk", true, "dm/c1/ota/blk"},
	{"gw", "dm/d1/cmd", false, "dm/d1/cmd"},
	{"gw", "dm/c1/birth", false, "dm/c1/birth"},
	{"c1", "dm/c1/cmd", true, "dm/c1/cmd"},
	{"c1", "dm/gw/cmd", false, "dm/gw/cmd"},
	{"ops", "dm/admin/reply/ops/#", true, "dm/admin/reply/ops/z"},
	{"ops", "dm/fleet/events", true, "dm/fleet/events"},
	{"ops", "telemetry/#", true, "telemetry/d1/temp"},
	{"ops", "$SYS/#", true, "$SYS/test"},
	{"ops", "dm/admin/reply/olga/#", false, "dm/admin/reply/olga/z"},
	{"ops", "dm/d1/cmd", false, "dm/d1/cmd"},
	{"ops", "dm/+/hb", false, "dm/d2/hb"},
	{"ops", "#", false, "elsewhere/topic"},
	{"olga", "dm/fleet/events", true, "dm/fleet/events"},
	{"olga", "dm/admin/reply/olga/#", true, "dm/admin/reply/olga/z"},
	{"olga", "telemetry/#", true, "telemetry/d1/temp"},
	{"olga", "dm/admin/reply/ops/#", false, "dm/admin/reply/ops/z"},
	{"olga", "dm/d2/ota/manifest", false, "dm/d2/ota/manifest"},
}

// barrier is a topic each client may receive; the server publishes it last,
// so once it has arrived every earlier publish to that client has too.
func barrier(who string) (filter, topic string) {
	switch who {
	case opID, obID:
		return "dm/admin/reply/" + who + "/barrier", "dm/admin/reply/" + who + "/barrier"
	}
	return "dm/" + who + "/cmd", "dm/" + who + "/cmd"
}

// matches is MQTT topic matching for the test's expectations.
func matches(filter, topic string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		_, filter, _ = strings.Cut(rest, "/")
	}
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, fv := range f {
		if fv == "#" {
			return !(i == 0 && strings.HasPrefix(topic, "$"))
		}
		if i >= len(t) || fv != "+" && fv != t[i] || fv == "+" && i == 0 && strings.HasPrefix(topic, "$") {
			return false
		}
	}
	return len(f) == len(t)
}

// checkEffects verifies what the publishes did to the registry: allowed
// births and heartbeats counted, refused ones not.
func checkEffects(t *testing.T, b *tb, want map[string][2]uint64) {
	t.Helper()
	for id, w := range want {
		v, ok := b.Fleet().Get(id)
		if !ok {
			t.Fatalf("%s not registered", id)
		}
		births := uint64(0)
		if !v.Status.BirthAt.IsZero() {
			births = 1
		}
		if v.Status.Heartbeats != w[0] || births != w[1] {
			t.Errorf("%s: %d heartbeats and birth=%d, want %d and %d", id, v.Status.Heartbeats, births, w[0], w[1])
		}
	}
}

// effects after running pubCases once: {heartbeats, birth seen}.
var wantEffects = map[string][2]uint64{
	"d1": {1, 1},
	"d2": {0, 0},
	"gw": {1, 0},
	"c1": {2, 1},
}

func TestACLMatrixPahoV5(t *testing.T) {
	b := startBroker(t)
	tok := fleetSetup(b)
	clients := map[string]*client{}
	for _, id := range []string{"d1", "d2", "gw", "c1", opID, obID} {
		clients[id] = b.device(id, tok[id])
	}

	// Publishing.
	for _, c := range pubCases {
		rc := clients[c.who].publish(c.topic, payloadFor(c.topic))
		if c.allow && rc >= 0x80 || !c.allow && rc != 0x87 {
			t.Errorf("%s publish %s: reason 0x%02x, want allowed=%v", c.who, c.topic, rc, c.allow)
		}
	}
	for _, c := range adminPubCases {
		cl := clients[c.who]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pr, err := cl.cli.Publish(ctx, &paho.Publish{Topic: c.topic, QoS: 1, Payload: []byte("{}"),
			Properties: &paho.PublishProperties{ResponseTopic: "dm/admin/reply/" + c.who + "/r", CorrelationData: []byte("c")}})
		cancel()
		if pr == nil {
			t.Fatalf("%s publish %s: %v", c.who, c.topic, err)
		}
		if c.allow && pr.ReasonCode >= 0x80 || !c.allow && pr.ReasonCode != 0x87 {
			t.Errorf("%s publish %s: reason 0x%02x, want allowed=%v", c.who, c.topic, pr.ReasonCode, c.allow)
		}
	}
	checkEffects(t, b, wantEffects)

	// Subscribing.
	for _, c := range subCases {
		rc := clients[c.who].subscribe(c.filter)
		if c.allow && rc >= 0x80 || !c.allow && rc != 0x87 {
			t.Errorf("%s subscribe %s: reason 0x%02x, want allowed=%v", c.who, c.filter, rc, c.allow)
		}
	}
	for id := range clients {
		if f, _ := barrier(id); clients[id].subscribe(f) >= 0x80 {
			t.Fatalf("%s cannot subscribe to its barrier %s", id, f)
		}
	}
	// Deliver every probe topic, then the barriers.
	for _, c := range subCases {
		b.serverPublish(c.deliver, []byte("probe"))
	}
	for id := range clients {
		_, topic := barrier(id)
		b.serverPublish(topic, []byte("barrier"))
	}
	for id, cl := range clients {
		_, bt := barrier(id)
		cl.waitFor(bt, 10*time.Second)
		got := cl.received()
		var allowedFilters []string
		for _, c := range subCases {
			if c.who == id && c.allow {
				allowedFilters = append(allowedFilters, c.filter)
			}
		}
		for _, c := range subCases {
			if c.who != id {
				continue
			}
			covered := slices.ContainsFunc(allowedFilters, func(f string) bool { return matches(f, c.deliver) })
			if covered && !slices.Contains(got, c.deliver) {
				t.Errorf("%s did not receive %s though subscribed", id, c.deliver)
			}
			if !covered && slices.Contains(got, c.deliver) {
				t.Errorf("%s received %s through a refused subscription %s", id, c.deliver, c.filter)
			}
		}
	}
}

// TestACLMatrixMosquitto runs the same matrix with Debian's mosquitto
// clients, as MQTT 3.1.1 and 5 devices and operators.
func TestACLMatrixMosquitto(t *testing.T) {
	for _, version := range []string{"mqttv311", "mqttv5"} {
		t.Run(version, func(t *testing.T) {
			b := startBroker(t)
			tok := fleetSetup(b)
			host, port := b.hostPort()
			base := func(who string) []string {
				return []string{"-h", host, "-p", port, "-i", who, "-u", who, "-P", tok[who], "-V", version}
			}
			dir := t.TempDir()
			for i, c := range pubCases {
				f := filepath.Join(dir, fmt.Sprintf("p%d", i))
				if err := os.WriteFile(f, payloadFor(c.topic), 0o600); err != nil {
					t.Fatal(err)
				}
				out, err := mosq(t, "mosquitto_pub", append(base(c.who), "-t", c.topic, "-q", "1", "-d", "-f", f)...)
				refusedV5 := strings.Contains(out, "RC:135")
				switch {
				case version == "mqttv5" && c.allow && (err != nil || refusedV5):
					t.Errorf("%s publish %s refused: %v\n%s", c.who, c.topic, err, out)
				case version == "mqttv5" && !c.allow && !refusedV5:
					t.Errorf("%s publish %s not refused with 0x87:\n%s", c.who, c.topic, out)
				case version == "mqttv311" && c.allow && err != nil:
					t.Errorf("%s publish %s failed: %v\n%s", c.who, c.topic, err, out)
				case version == "mqttv311" && !c.allow && err == nil:
					// A v3 client has no refusal code: the broker closes
					// the connection instead of acknowledging.
					t.Errorf("%s publish %s was acknowledged:\n%s", c.who, c.topic, out)
				}
			}
			if version == "mqttv5" {
				for _, c := range adminPubCases {
					out, err := mosq(t, "mosquitto_pub", append(base(c.who), "-t", c.topic, "-q", "1", "-d", "-m", "{}",
						"-D", "publish", "response-topic", "dm/admin/reply/"+c.who+"/r")...)
					refused := strings.Contains(out, "RC:135")
					if c.allow && (err != nil || refused) || !c.allow && !refused {
						t.Errorf("%s publish %s: allowed=%v but: %v\n%s", c.who, c.topic, c.allow, err, out)
					}
				}
			}
			checkEffects(t, b, wantEffects)

			for _, c := range subCases {
				checkSubscription(t, b, base(c.who), version, c)
			}
		})
	}
}

// checkSubscription subscribes with mosquitto_sub to the case's filter (and,
// for a refused one, also to the client's barrier), publishes the probe and
// the barrier as the broker, and checks what arrives first.
func checkSubscription(t *testing.T, b *tb, base []string, version string, c subCase) {
	t.Helper()
	bf, bt := barrier(c.who)
	// -R: retained messages (the broker's $SYS ones) are not the probe.
	args := append(base, "-t", c.filter, "-C", "1", "-v", "-R", "-W", "15")
	if !c.allow {
		args = append(args, "-t", bf)
	}
	if version == "mqttv5" {
		args = append(args, "-d") // prints the SUBACK reason codes
	}
	type result struct {
		out string
		err error
	}
	// The previous case's session of this client must be gone, or the
	// probe could go to it.
	eventually(t, 10*time.Second, func() error {
		if cl, ok := b.Server().Clients.Get(c.who); ok && !cl.Closed() {
			return fmt.Errorf("%s still connected from the previous case", c.who)
		}
		return nil
	})
	needCommand(t, "mosquitto_sub")
	needCommand(t, "stdbuf")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Line-buffered, so that its SUBACK line is seen while it runs.
	cmd := exec.CommandContext(ctx, "stdbuf", append([]string{"-oL", "-eL", "mosquitto_sub"}, args...)...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan result, 1)
	go func() {
		err := cmd.Wait()
		done <- result{out.String(), err}
	}()
	// Wait until the broker holds the subscription (the barrier's, for a
	// refused filter; both were in the same SUBSCRIBE packet) and, on v5,
	// until the tool has the SUBACK (the broker adds the subscriptions
	// before it writes the SUBACK: a probe published in between would come
	// first), or until the tool is done (a fleet event can satisfy an
	// allowed subscription to the fleet events on its own).
	var r *result
	eventually(t, 10*time.Second, func() error {
		select {
		case x := <-done:
			r = &x
			return nil
		default:
		}
		cl, ok := b.Server().Clients.Get(c.who)
		if !ok || cl.Closed() || len(cl.State.Subscriptions.GetAll()) == 0 {
			return fmt.Errorf("%s not subscribed yet", c.who)
		}
		if version == "mqttv5" && !strings.Contains(out.String(), "received SUBACK") {
			return fmt.Errorf("%s has no SUBACK yet", c.who)
		}
		return nil
	})
	if r == nil {
		b.serverPublish(c.deliver, []byte("probe"))
		if !c.allow {
			b.serverPublish(bt, []byte("barrier"))
		}
		x := <-done
		r = &x
	}
	first := strings.TrimSpace(lastLine(r.out))
	if c.allow {
		if !strings.HasPrefix(first, c.deliver+" ") {
			t.Errorf("%s (%s) subscribed to %s but got %q (%v)", c.who, version, c.filter, r.out, r.err)
		}
		return
	}
	if !strings.HasPrefix(first, bt+" ") {
		t.Errorf("%s (%s) refused %s: first message should be the barrier, got %q (%v)", c.who, version, c.filter, r.out, r.err)
	}
	if version == "mqttv5" && !strings.Contains(r.out, "135") {
		t.Errorf("%s (v5) subscribe %s: no 0x87 in SUBACK:\n%s", c.who, c.filter, r.out)
	}
}

// lastLine returns the last line of mosquitto_sub output that is a message
// ("topic payload"), skipping its debug lines.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.HasPrefix(l, "Client ") && !strings.HasPrefix(l, "Subscribed") {
			return l
		}
	}
	return ""
}
