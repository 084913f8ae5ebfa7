package test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/wire"
)

// subscribeAll subscribes to filters in one SUBSCRIBE and returns the
// reason codes.
func (c *client) subscribeAll(filters []string) []byte {
	c.t.Helper()
	var subs []paho.SubscribeOptions
	for _, f := range filters {
		subs = append(subs, paho.SubscribeOptions{Topic: f, QoS: 0})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if sa == nil {
		c.t.Fatalf("%s subscribe: %v", c.id, err)
	}
	return sa.Reasons
}

// TestSubscriptionLimits: an observer cannot grow the broker's topic tree
// without bound (it once made 400,000 subscriptions in 2 s): subscriptions
// past the per-client cap, filters deeper or longer than the limits are
// refused, and resubscribing to a filter it has costs nothing.
func TestSubscriptionLimits(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.MaxSubscriptions = 50 })
	b.addOperator("watch", "observer", "observer password 1")
	ob := b.operator("watch", "observer password 1")

	var filters []string
	for i := range 80 {
		filters = append(filters, fmt.Sprintf("telemetry/d%d/#", i))
	}
	codes := ob.subscribeAll(filters[:30])
	codes = append(codes, ob.subscribeAll(filters[30:])...)
	for i, c := range codes {
		if i < 50 && c >= 0x80 || i >= 50 && c != 0x8f {
			t.Fatalf("subscription %d: 0x%02x (cap 50: the first 50 granted, the rest 0x8f)", i, c)
		}
	}
	// The same filters again are not new subscriptions.
	for i, c := range ob.subscribeAll(filters[:50]) {
		if c >= 0x80 {
			t.Fatalf("resubscribing to filter %d: 0x%02x", i, c)
		}
	}
	cl, ok := b.Server().Clients.Get("watch")
	if !ok || cl.State.Subscriptions.Len() != 50 {
		t.Fatalf("observer holds %d subscriptions, want 50", cl.State.Subscriptions.Len())
	}
	if v, err := b.metric(`otamq_rejected_total{reason="subscription_cap"}`); err != nil || atoi(v) != 30 {
		t.Fatalf("subscription_cap refusals = %q, %v; want 30", v, err)
	}
	// Unsubscribing makes room again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ob.cli.Unsubscribe(ctx, &paho.Unsubscribe{Topics: filters[:1]}); err != nil {
		t.Fatal(err)
	}
	if c := ob.subscribe(filters[60]); c >= 0x80 {
		t.Fatalf("after an unsubscribe: 0x%02x", c)
	}

	// Depth and length, on a fresh client.
	op := b.operator(opID, opPassword)
	deep := "telemetry" + strings.Repeat("/x", hooks.DefaultMaxFilterLevels-1)
	long := "telemetry/" + strings.Repeat("y", hooks.DefaultMaxFilterLength)
	codes = op.subscribeAll([]string{deep, deep + "/x", long[:hooks.DefaultMaxFilterLength], long})
	if codes[0] >= 0x80 || codes[1] != 0x8f || codes[2] >= 0x80 || codes[3] != 0x8f {
		t.Fatalf("at and past the depth and length limits: % x (want granted, 8f, granted, 8f)", codes)
	}
	// MQTT 3.1.1 has no 0x8f: mosquitto_sub is told the subscription
	// failed.
	h, p := b.hostPort()
	out, err := mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-V", "mqttv311", "-i", "watch", "-u", "watch", "-P", "observer password 1",
		"-t", deep+"/x", "-C", "1", "-W", "5")
	if !strings.Contains(out, "denied") {
		t.Fatalf("3.1.1 subscription past the depth limit: %v: %s", err, out)
	}
}

// TestGatewaySubscriptionLimit: a gateway subscribes to three topics per
// child, so it has a cap of its own.
func TestGatewaySubscriptionLimit(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.MaxSubscriptions = 5; o.MaxGatewaySubscriptions = 9 })
	gtok := b.register("gw-1", "gateway", "")
	var filters []string
	for i := range 4 {
		child := fmt.Sprintf("child-%d", i)
		b.register(child, "device", "gw-1")
		for _, k := range []string{"ota/manifest", "ota/blk", "cmd"} {
			filters = append(filters, "dm/"+child+"/"+k)
		}
	}
	gw := b.device("gw-1", gtok)
	codes := gw.subscribeAll(filters)
	for i, c := range codes {
		if i < 9 && c >= 0x80 || i >= 9 && c != 0x8f {
			t.Fatalf("gateway subscription %d: 0x%02x (cap 9)", i, c)
		}
	}
}

// TestOperatorSessionExpiry: operators and observers get sessions of at
// most the operator session expiry, and are told so in CONNACK; devices
// keep what they ask for (up to the broker's maximum). An MQTT 3.1.1
// observer's session ends with its connection.
func TestOperatorSessionExpiry(t *testing.T) {
	b := startBroker(t)
	b.addOperator("watch", "observer", "observer password 1")
	tok := b.register("d-exp", "device", "")
	week := uint32(7 * 24 * 3600)
	for _, c := range []struct {
		id, pw string
		want   uint32
	}{{"watch", "observer password 1", 3600}, {opID, opPassword, 3600}, {"d-exp", tok, week}} {
		conn, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		cli := paho.NewClient(paho.ClientConfig{ClientID: c.id, Conn: conn})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ca, err := cli.Connect(ctx, &paho.Connect{ClientID: c.id, KeepAlive: 30, Username: c.id, UsernameFlag: true,
			Password: []byte(c.pw), PasswordFlag: true, Properties: &paho.ConnectProperties{SessionExpiryInterval: &week}})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", c.id, err)
		}
		got := uint32(0)
		if ca.Properties != nil && ca.Properties.SessionExpiryInterval != nil {
			got = *ca.Properties.SessionExpiryInterval
		}
		if got != c.want {
			t.Fatalf("%s asked for a week: CONNACK session expiry %d, want %d", c.id, got, c.want)
		}
		if cl, ok := b.Server().Clients.Get(c.id); !ok || cl.Properties.Props.SessionExpiryInterval != c.want {
			t.Fatalf("%s: the broker keeps its session for %d s, want %d", c.id, cl.Properties.Props.SessionExpiryInterval, c.want)
		}
		_ = cli.Disconnect(&paho.Disconnect{})
	}

	// 3.1.1 observer asking for a persistent session.
	h, p := b.hostPort()
	if out, err := mosq(t, "mosquitto_sub", "-h", h, "-p", p, "-V", "mqttv311", "-c", "-i", "watch", "-u", "watch", "-P", "observer password 1",
		"-t", "dm/fleet/events", "-W", "1"); err != nil && !strings.Contains(out, "Timed out") {
		t.Fatalf("mosquitto_sub: %v: %s", err, out)
	}
	eventually(t, 5*time.Second, func() error {
		if _, ok := b.Server().Clients.Get("watch"); ok {
			return fmt.Errorf("the 3.1.1 observer's session outlived its connection")
		}
		return nil
	})
}

// TestSysTopicsAccess: $SYS is for operators and observers, not devices
// (docs/OPERATORS.md says the same).
func TestSysTopicsAccess(t *testing.T) {
	b := startBroker(t)
	b.addOperator("watch", "observer", "observer password 1")
	tok := b.register("d-sys", "device", "")
	for _, c := range []struct {
		cli  *client
		want bool
	}{{b.operator(opID, opPassword), true}, {b.operator("watch", "observer password 1"), true}, {b.device("d-sys", tok), false}} {
		rc := c.cli.subscribe("$SYS/#")
		if c.want && rc >= 0x80 || !c.want && rc != 0x87 {
			t.Fatalf("%s subscribing to $SYS/#: 0x%02x", c.cli.id, rc)
		}
	}
}

// TestLastWillOnDeviceTopics: a Will on a device topic is checked at
// CONNECT as the message it stands for, applied as that message when it
// fires, and never left retained.
func TestLastWillOnDeviceTopics(t *testing.T) {
	b := startBroker(t)
	tok := b.register("d-will", "device", "")

	// Malformed payload, and a block request as a will: refused.
	for _, w := range []*paho.WillMessage{
		{Topic: "dm/d-will/ev", QoS: 1, Payload: []byte{0xff, 0x00}},
		{Topic: "dm/d-will/hb", QoS: 0, Payload: []byte("not cbor")},
		{Topic: "dm/d-will/ota/get", QoS: 0, Payload: wire.BlockRequest{Digest: make([]byte, 32), Size: 4096, Count: 1}.Encode()},
	} {
		c, err := dialClient(t, b.Addr(), "d-will", clientOpts{username: "d-will", password: tok, will: w})
		if err == nil {
			t.Fatalf("will on %s with a bad payload accepted", w.Topic)
		}
		if c == nil || c.ca == nil || c.ca.ReasonCode < 0x80 {
			t.Fatalf("will on %s: %v", w.Topic, err)
		}
	}

	// A retained heartbeat will and an event will, each fired by a lost
	// connection.
	hb := wire.Heartbeat{UptimeSeconds: 77, HealthFlags: wire.HealthAppOK, RSSI: -80}.Encode()
	ev := wire.Event{Code: wire.EvHealthFailed, Detail: "will"}.Encode()
	for i, w := range []*paho.WillMessage{
		{Topic: "dm/d-will/hb", QoS: 0, Retain: true, Payload: hb},
		{Topic: "dm/d-will/ev", QoS: 1, Retain: true, Payload: ev},
	} {
		conn, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dialClient(t, b.Addr(), "d-will", clientOpts{username: "d-will", password: tok, will: w, conn: conn}); err != nil {
			t.Fatalf("will on %s: %v", w.Topic, err)
		}
		_ = conn.Close() // the network drops: the will fires
		b.waitStatus("d-will", "will fired", func(s fleet.Status) bool { return s.Wills == uint64(i+1) && !s.Online })
	}
	if st, _ := b.Fleet().Get("d-will"); st.Status.Uptime != 77 {
		t.Fatalf("heartbeat will not applied: uptime %d", st.Status.Uptime)
	}
	if n := timelineLen(t, b, "d-will"); n != 1 {
		t.Fatalf("timeline has %d entries, want the event will", n)
	}
	for topic := range b.Server().Topics.Retained.GetAll() {
		if strings.HasPrefix(topic, "dm/") {
			t.Fatalf("a will left a retained message on %s", topic)
		}
	}
}

// TestTopicAliases: CONNACK advertises the Topic Alias Maximum, and a
// publish by alias alone is judged by the topic the alias stands for.
func TestTopicAliases(t *testing.T) {
	b := startBroker(t)
	tok := b.register("d-alias", "device", "")
	dev := b.device("d-alias", tok)
	if dev.ca.Properties == nil || dev.ca.Properties.TopicAliasMaximum == nil || *dev.ca.Properties.TopicAliasMaximum != broker.DefaultTopicAliasMax {
		t.Fatalf("CONNACK topic alias maximum: %+v", dev.ca.Properties)
	}
	ev := wire.Event{Code: wire.EvCheckStarted}.Encode()
	alias := uint16(3)
	pub := func(topic string) byte {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pr, err := dev.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: ev, Properties: &paho.PublishProperties{TopicAlias: &alias}})
		if pr == nil {
			t.Fatalf("publish %q: %v", topic, err)
		}
		return pr.ReasonCode
	}
	if rc := pub("dm/d-alias/ev"); rc != 0 {
		t.Fatalf("publish setting the alias: 0x%02x", rc)
	}
	if rc := pub(""); rc != 0 {
		t.Fatalf("publish by alias alone: 0x%02x", rc)
	}
	if n := timelineLen(t, b, "d-alias"); n != 2 {
		t.Fatalf("timeline has %d events, want 2 (one by alias)", n)
	}
	// An alias never set stands for nothing: refused.
	alias = 4
	if rc := pub(""); rc != 0x87 {
		t.Fatalf("publish by an unset alias: 0x%02x, want 0x87", rc)
	}
}

// TestEmptyPasswordV311: MQTT 3.1.1 allows a password of zero bytes;
// otamq refuses it as a wrong password with a 3.1.1 return code (5), not
// mochi's 0x82 that a 3.1.1 client cannot read.
func TestEmptyPasswordV311(t *testing.T) {
	b := startBroker(t)
	b.register("d-empty", "device", "")
	rc, _, err := rawLogin(b.Addr(), "", "d-empty", "")
	if err != nil || rc != 5 {
		t.Fatalf("empty password: CONNACK %d, %v; want 5", rc, err)
	}
	h, p := b.hostPort()
	out, err := mosq(t, "mosquitto_pub", "-h", h, "-p", p, "-V", "mqttv311", "-i", "d-empty", "-u", "d-empty", "-P", "", "-t", "dm/d-empty/hb", "-m", "x")
	if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
		t.Fatalf("mosquitto_pub with an empty password: %v: %s", err, out)
	}
}

// TestOnlyAuthorizedSubscribersCount: a former gateway's leftover
// subscriptions, with a tiny Maximum Packet Size, neither block offers to
// its former child nor count as delivering commands to it.
func TestOnlyAuthorizedSubscribersCount(t *testing.T) {
	b := startBroker(t)
	key, pub := newKey(t)
	b.trustKey(pub)
	rel := b.release(makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 4096))
	gtok := b.register("gw-old", "gateway", "")
	ctok := b.register("kid", "device", "gw-old", map[string]any{"hardware": "esp32-v2"})

	gw, err := dialClient(t, b.Addr(), "gw-old", clientOpts{username: "gw-old", password: gtok, maxPacket: 128})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ota/manifest", "cmd"} {
		if rc := gw.subscribe("dm/kid/" + k); rc >= 0x80 {
			t.Fatalf("gateway subscribing for its child: 0x%02x", rc)
		}
	}
	// The child leaves the gateway; the gateway's subscriptions stay.
	if err := b.admin().Call(context.Background(), "device/update", map[string]any{"id": "kid", "parent": ""}, nil); err != nil {
		t.Fatal(err)
	}
	// A command now reaches nobody authorized: not delivered.
	var res struct {
		Results []struct {
			Device string
			OK     bool
			Error  string
		}
	}
	if err := b.admin().Call(context.Background(), "command/send", map[string]any{"verb": "check", "devices": []string{"kid"}}, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Results) != 1 || res.Results[0].OK || !strings.Contains(res.Results[0].Error, "not delivered") {
		t.Fatalf("command to a device only a former gateway listens for: %+v", res.Results)
	}
	// The child itself connects and gets its offer, although the former
	// gateway could not take it.
	kid := b.device("kid", ctok)
	for _, k := range []string{"ota/manifest", "cmd"} {
		if rc := kid.subscribe("dm/kid/" + k); rc >= 0x80 {
			t.Fatalf("child subscribing: 0x%02x", rc)
		}
	}
	b.offer(rel.ID, "kid")
	kid.waitFor("dm/kid/ota/manifest", 10*time.Second)
	if err := b.admin().Call(context.Background(), "command/send", map[string]any{"verb": "check", "devices": []string{"kid"}}, &res); err != nil {
		t.Fatal(err)
	}
	if !res.Results[0].OK {
		t.Fatalf("command once the child subscribes: %+v", res.Results)
	}
	if got := gw.received(); len(got) != 0 {
		t.Fatalf("the former gateway received %v", got)
	}
}

// TestGatewayTooSmallForChildMessages: a child's messages reach its
// gateway, so a gateway whose Maximum Packet Size is below one keeps it
// from being sent at all (mochi would wedge the session on a QoS 1 message
// it cannot send): the offer is not sent and counted; a command, which
// fits, is delivered. Once the gateway can take the offer, it gets it when
// it subscribes again.
func TestGatewayTooSmallForChildMessages(t *testing.T) {
	b := startBroker(t)
	key, pub := newKey(t)
	b.trustKey(pub)
	rel := b.release(makeFirmware(t, key, "2.0.0", []string{"esp32-v2"}, 4096))
	gtok := b.register("gw-small", "gateway", "")
	b.register("kid2", "device", "gw-small", map[string]any{"hardware": "esp32-v2"})
	gw, err := dialClient(t, b.Addr(), "gw-small", clientOpts{username: "gw-small", password: gtok, maxPacket: 128})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ota/manifest", "cmd"} {
		if rc := gw.subscribe("dm/kid2/" + k); rc >= 0x80 {
			t.Fatalf("gateway subscribing for its child: 0x%02x", rc)
		}
	}
	b.offer(rel.ID, "kid2")
	b.waitMetricAtLeast(`otamq_rejected_total{reason="too_large_for_client"}`, 1)
	var res struct {
		Results []struct {
			OK    bool
			Error string
		}
	}
	if err := b.admin().Call(context.Background(), "command/send", map[string]any{"verb": "check", "devices": []string{"kid2"}}, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Results) != 1 || !res.Results[0].OK {
		t.Fatalf("a command that fits, to a child through a small gateway: %+v", res.Results)
	}
	gw.waitFor("dm/kid2/cmd", 10*time.Second)
	if got := gw.received(); len(got) != 1 {
		t.Fatalf("the small gateway received %v, want the command only", got)
	}
	_ = gw.cli.Disconnect(&paho.Disconnect{})
	big, err := dialClient(t, b.Addr(), "gw-small", clientOpts{username: "gw-small", password: gtok})
	if err != nil {
		t.Fatal(err)
	}
	if rc := big.subscribe("dm/kid2/ota/manifest"); rc >= 0x80 {
		t.Fatalf("gateway subscribing again: 0x%02x", rc)
	}
	big.waitFor("dm/kid2/ota/manifest", 10*time.Second)
}

// TestOperatorSessionIDsAreBounded: an operator's per-process session
// (client ID "ID~SUFFIX", as otactl connects) gets the operator session
// expiry too.
func TestOperatorSessionIDsAreBounded(t *testing.T) {
	b := startBroker(t)
	week := uint32(7 * 24 * 3600)
	conn, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := opID + "~s1"
	cli := paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := cli.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, Username: opID, UsernameFlag: true,
		Password: []byte(opPassword), PasswordFlag: true, Properties: &paho.ConnectProperties{SessionExpiryInterval: &week}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cli.Disconnect(&paho.Disconnect{}) }()
	if ca.Properties == nil || ca.Properties.SessionExpiryInterval == nil || *ca.Properties.SessionExpiryInterval != 3600 {
		t.Fatalf("session %s: CONNACK %+v", id, ca.Properties)
	}
}
