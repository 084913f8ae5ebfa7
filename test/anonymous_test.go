package test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/fleet"
)

func anonymousBroker(t *testing.T) *tb {
	t.Helper()
	return startBroker(t, func(o *broker.Options) {
		o.AnonymousTCP = true
		o.Rules = append(append([]access.Rule(nil), testRules...),
			access.Rule{Filter: "public/#", Roles: []fleet.Role{access.RoleAnonymous}, Access: "readwrite"},
			access.Rule{Filter: "mine/{id}/#", Roles: []fleet.Role{access.RoleAnonymous, fleet.RoleDevice}, Access: "readwrite"},
			access.Rule{Filter: "everyone/#", Access: "readwrite"}, // no roles: registered clients only
		)
	})
}

func (c *client) publishCode(topic string) byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, err := c.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("x")})
	if pr == nil {
		c.t.Fatalf("%s publish %s: %v", c.id, topic, err)
	}
	return pr.ReasonCode
}

// TestAnonymousACLMatrix: on a listener that allows them, anonymous
// clients get exactly the rules naming the anonymous role, outside the
// prefix; nothing of the fleet, $SYS or the admin API.
func TestAnonymousACLMatrix(t *testing.T) {
	b := anonymousBroker(t)
	b.register("dev-9", "device", "")
	anon, err := dialClient(t, b.Addr(), "conformance-client-1", clientOpts{})
	if err != nil {
		t.Fatalf("anonymous connect: %v", err)
	}
	subs := map[string]bool{
		"public/#": true, "public/a/b": true, "$share/g/public/#": true,
		"dm/#": false, "dm/fleet/events": false, "dm/dev-9/ota/manifest": false, "dm/conformance-client-1/cmd": false,
		"dm/admin/reply/conformance-client-1/#": false, "$SYS/#": false, "#": false, "+/x": false, "telemetry/#": false,
		"$share/g/dm/#": false, "everyone/x": false, "mine/conformance-client-1/x": false, "dm": false,
	}
	for f, want := range subs {
		rc := anon.subscribe(f)
		if want && rc >= 0x80 || !want && rc < 0x80 {
			t.Errorf("anonymous subscribe %q: 0x%02x, want allowed=%v", f, rc, want)
		}
	}
	pubs := map[string]bool{
		"public/x": true, "dm/conformance-client-1/hb": false, "dm/conformance-client-1/ev": false, "dm/dev-9/ev": false,
		"dm/admin/device/list": false, "dm/admin/device/register": false, "telemetry/conformance-client-1/x": false,
		"everyone/x": false, "mine/conformance-client-1/x": false, "dm/fleet/events": false,
	}
	for topic, want := range pubs {
		rc := anon.publishCode(topic)
		if want && rc >= 0x80 || !want && rc != 0x87 {
			t.Errorf("anonymous publish %q: 0x%02x, want allowed=%v", topic, rc, want)
		}
	}
	// Registered clients are unaffected by the anonymous rule and keep
	// their own.
	tok := b.register("dev-10", "device", "")
	dev := b.device("dev-10", tok)
	if rc := dev.subscribe("public/#"); rc != 0x87 {
		t.Errorf("device subscribing to the anonymous rule's topics: 0x%02x", rc)
	}
	if rc := dev.publishCode("everyone/x"); rc >= 0x80 {
		t.Errorf("device publishing under a rule without roles: 0x%02x", rc)
	}
	if rc := dev.publishCode("mine/dev-10/x"); rc >= 0x80 {
		t.Errorf("device publishing under its {id} rule: 0x%02x", rc)
	}
}

// TestAnonymousNeverARegisteredID: an anonymous client cannot use a
// registered client's ID or a reserved one, and registering its ID while
// it is connected gives its connection nothing.
func TestAnonymousNeverARegisteredID(t *testing.T) {
	b := anonymousBroker(t)
	b.register("dev-1", "device", "")
	for _, id := range []string{"dev-1", opID, "inline", "admin", "fleet"} {
		c, err := dialClient(t, b.Addr(), id, clientOpts{})
		if err == nil {
			t.Fatalf("anonymous client got ID %q", id)
		}
		if c == nil || c.ca == nil || c.ca.ReasonCode != 0x87 {
			t.Fatalf("anonymous client with ID %q: %v", id, err)
		}
	}
	// A wrong token for a registered ID is refused, not let in anonymously.
	if _, err := dialClient(t, b.Addr(), "dev-1", clientOpts{username: "dev-1", password: "wrong token"}); err == nil {
		t.Fatal("wrong token let in")
	}

	anon, err := dialClient(t, b.Addr(), "later", clientOpts{})
	if err != nil {
		t.Fatal(err)
	}
	b.register("later", "device", "")
	if rc := anon.subscribe("dm/later/cmd"); rc != 0x87 {
		t.Fatalf("anonymous connection after its ID was registered: subscribe 0x%02x", rc)
	}
	if rc := anon.publishCode("dm/later/ev"); rc != 0x87 {
		t.Fatalf("anonymous connection after its ID was registered: publish 0x%02x", rc)
	}
	if v, err := b.metric("otamq_anonymous_connects_total"); err != nil || atoi(v) != 1 {
		t.Fatalf("anonymous connects = %q, %v", v, err)
	}
}

// TestAnonymousOffByDefault: without the option, an unregistered client is
// refused as before.
func TestAnonymousOffByDefault(t *testing.T) {
	b := startBroker(t)
	c, err := dialClient(t, b.Addr(), "stranger", clientOpts{})
	if err == nil || c == nil || c.ca == nil || c.ca.ReasonCode != 0x87 {
		t.Fatalf("unregistered client without the option: %v", err)
	}
}

// TestAnonymousWithMosquitto: the mosquitto clients, as a plain MQTT user
// would run them, publish and subscribe anonymously under the anonymous
// rule and are refused the fleet's topics.
func TestAnonymousWithMosquitto(t *testing.T) {
	b := anonymousBroker(t)
	h, p := b.hostPort()
	var wg sync.WaitGroup
	var out string
	var subErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, subErr = mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-i", "anon-sub", "-t", "public/#", "-C", "1", "-W", "15")
	}()
	eventually(t, 10*time.Second, func() error {
		if cl, ok := b.Server().Clients.Get("anon-sub"); !ok || cl.State.Subscriptions.Len() == 0 {
			return fmt.Errorf("mosquitto_sub not subscribed yet")
		}
		return nil
	})
	if o, err := mosq(t, "mosquitto_pub", "-h", h, "-p", p, "-i", "anon-pub", "-t", "public/hello", "-m", "hi from anonymous"); err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, o)
	}
	wg.Wait()
	if subErr != nil || !strings.Contains(out, "hi from anonymous") {
		t.Fatalf("mosquitto_sub: %v: %q", subErr, out)
	}
	for _, v := range []string{"mqttv311", "mqttv5"} {
		o, _ := mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-V", v, "-i", "anon-"+v, "-t", "dm/#", "-C", "1", "-W", "3")
		if !strings.Contains(o, "denied") {
			t.Fatalf("%s anonymous subscription to dm/#: %q", v, o)
		}
	}
}
