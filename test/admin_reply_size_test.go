package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/cmd/otactl/rpc"
)

// smallSession is a persistent MQTT v5 session of the test operator with a
// small Maximum Packet Size, publishing admin requests by hand.
type smallSession struct {
	t     *testing.T
	b     *tb
	id    string
	cli   *paho.Client
	got   chan *paho.Publish
	reply string
}

func (b *tb) smallSession(t *testing.T, id string, maxPacket uint32, clean bool) *smallSession {
	t.Helper()
	conn, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := &smallSession{t: t, b: b, id: id, got: make(chan *paho.Publish, 16), reply: "dm/admin/reply/" + id + "/r"}
	s.cli = paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			s.got <- pr.Packet
			return true, nil
		}}})
	expiry := uint32(600)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := s.cli.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: clean, UsernameFlag: true, Username: opID,
		PasswordFlag: true, Password: []byte(opPassword),
		Properties: &paho.ConnectProperties{MaximumPacketSize: &maxPacket, SessionExpiryInterval: &expiry}})
	if err != nil {
		t.Fatalf("connect %s: %v (%+v)", id, err, ca)
	}
	if clean {
		if _, err := s.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: s.reply, QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// call publishes a request and returns the reply's payload, or fails the
// test if none arrives.
func (s *smallSession) call(action string, body any) map[string]any {
	s.t.Helper()
	raw, _ := json.Marshal(body)
	corr := fmt.Sprint(time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.cli.Publish(ctx, &paho.Publish{Topic: "dm/admin/" + action, QoS: 1, Payload: raw,
		Properties: &paho.PublishProperties{ResponseTopic: s.reply, CorrelationData: []byte(corr)}}); err != nil {
		s.t.Fatalf("%s: %v", action, err)
	}
	for {
		select {
		case p := <-s.got:
			if string(p.Properties.CorrelationData) != corr {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal(p.Payload, &m); err != nil {
				s.t.Fatal(err)
			}
			return m
		case <-ctx.Done():
			s.t.Fatalf("%s: no reply on %s", action, s.id)
		}
	}
}

func (s *smallSession) close() { _ = s.cli.Disconnect(&paho.Disconnect{}) }

// TestAdminRepliesFitMaxPacketSize: an admin reply never exceeds the
// requester's Maximum Packet Size. Lists come in pages that fit (the cursor
// goes on after them); anything else that cannot fit is a small too_large
// error with the size. Before, such a reply was dropped and the client's
// persistent session was wedged on every reconnect.
func TestAdminRepliesFitMaxPacketSize(t *testing.T) {
	b := startBroker(t)
	tags := map[string]any{}
	for i := range 6 {
		tags[fmt.Sprintf("k%d", i)] = strings.Repeat("v", 50)
	}
	for i := range 40 {
		b.register(fmt.Sprintf("dev-%02d", i), "device", "", map[string]any{"hardware": "esp32-v2", "tags": tags})
	}
	big := map[string]any{}
	for i := range 32 {
		big[fmt.Sprintf("t%02d", i)] = strings.Repeat("w", 128)
	}
	b.register("zz-big", "device", "", map[string]any{"tags": big})

	// rpc announces 2 KiB: device/list comes in pages, all of them read.
	small := b.dial(opID, opPassword, func(c *rpc.Config) { c.MaxPacketSize = 2048 })
	seen, pages := map[string]bool{}, 0
	req := map[string]any{"limit": 1000}
	for {
		var page struct {
			Devices []struct{ ID string } `json:"devices"`
			Next    string                `json:"next"`
		}
		if err := small.Call(context.Background(), "device/list", req, &page); err != nil {
			if pages == 0 {
				t.Fatalf("device/list: %v", err)
			}
			// "zz-big" alone does not fit a page.
			var re *rpc.RemoteError
			if !errors.As(err, &re) || re.Code != "too_large" {
				t.Fatalf("page %d: %v", pages+1, err)
			}
			break
		}
		pages++
		for _, d := range page.Devices {
			seen[d.ID] = true
		}
		if page.Next == "" {
			break
		}
		req["after"] = page.Next
	}
	if len(seen) != 40 || pages < 10 {
		t.Fatalf("read %d devices in %d pages", len(seen), pages)
	}
	var re *rpc.RemoteError
	if err := small.Call(context.Background(), "device/get", map[string]any{"id": "zz-big"}, nil); !errors.As(err, &re) ||
		re.Code != "too_large" || re.Size <= re.Limit || re.Limit <= 0 || re.Limit >= 2048 {
		t.Fatalf("device/get too large for the client: %v %+v", err, re)
	}

	// A persistent session with a 1 KiB limit gets the small error, and
	// its session still works after a reconnect.
	s := b.smallSession(t, opID+"~small", 1024, true)
	if m := s.call("device/get", map[string]any{"id": "zz-big"}); m["ok"] != false || m["error"].(map[string]any)["code"] != "too_large" {
		t.Fatalf("device/get big: %v", m)
	}
	if m := s.call("device/list", map[string]any{"limit": 1000}); m["ok"] != true || m["result"].(map[string]any)["next"] == "" {
		t.Fatalf("a page that fits 1 KiB: %v", m)
	}
	s.close()
	s = b.smallSession(t, opID+"~small", 1024, false)
	defer s.close()
	if m := s.call("device/get", map[string]any{"id": "dev-03"}); m["ok"] != true {
		t.Fatalf("after the reconnect: %v", m)
	}
}
