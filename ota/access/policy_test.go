package access

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/fleet/fleettest"
	"github.com/otamq/otamq/ota/store"
)

// Readers names every client that may receive a message on a device's
// topic: for every client and every filter that could match a device
// topic, one the policy allows to read is the topic itself, held by the
// device or its gateway.
func TestReaders(t *testing.T) {
	db, reg := fleettest.Open(t, nil)
	regs := []fleet.Registration{
		{ID: "g1", Role: fleet.RoleGateway},
		{ID: "g2", Role: fleet.RoleGateway},
		{ID: "d1", Role: fleet.RoleDevice},
		{ID: "c1", Role: fleet.RoleDevice, Attributes: fleet.Attributes{Parent: "g1"}},
		{ID: "c2", Role: fleet.RoleDevice, Attributes: fleet.Attributes{Parent: "g1"}},
		{ID: "gone", Role: fleet.RoleDevice, Attributes: fleet.Attributes{Parent: "g2"}},
		{ID: "op", Role: fleet.RoleOperator},
		{ID: "eye", Role: fleet.RoleObserver},
	}
	pw, err := fleet.PasswordSecret("a password long enough for the rules")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := db.Update(ctx, func(tx store.Tx) error {
		for _, r := range regs {
			secret := fleet.TokenSecret("a token long enough for the rules")
			if !r.Role.IsDevice() {
				secret = pw
			}
			if _, err := reg.Register(tx, r, secret, "t"); err != nil {
				return err
			}
		}
		_, err := reg.Revoke(tx, "gone", "test", "t")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	p := &Policy{Topics: Topics{Prefix: "dm"}, Fleet: reg, ReadOnly: func(string) bool { return true },
		Rules: []Rule{{Filter: "app/{id}/#", Access: "readwrite"}, {Filter: "public/#", Access: "read", Roles: []fleet.Role{RoleAnonymous}}}}
	devices := []string{"g1", "g2", "d1", "c1", "c2", "gone", "unknown"}
	clients := []string{"g1", "g2", "d1", "c1", "c2", "gone", "op", "eye", "op~1", "eye~x", "unknown", "g1~1"}
	var topics, filters []string
	for _, id := range devices {
		for _, kind := range append(slices.Clone(DeviceSubscribes), DevicePublishes...) {
			topic := p.Topics.Device(id, kind)
			topics = append(topics, topic)
			lv := strings.Split(topic, "/")
			filters = append(filters, topic, "$share/g/"+topic)
			for i := range lv {
				plus := slices.Clone(lv)
				plus[i] = "+"
				filters = append(filters, strings.Join(plus, "/"), strings.Join(append(slices.Clone(lv[:i]), "#"), "/"))
			}
		}
	}
	filters = append(filters, "#", "+/#", "dm/#", "dm/+/ota/manifest", "dm/+/+/+", "$share/g/#")
	checked := 0
	for _, cl := range clients {
		for _, f := range filters {
			if !p.Allowed(cl, f, false) {
				continue
			}
			for _, topic := range topics {
				if !Covers(f, topic) {
					continue
				}
				id, _, _ := p.Topics.ParseDevice(topic)
				dev, gw := p.Readers(id)
				checked++
				if f != topic || (cl != dev && cl != gw) || cl == "" {
					t.Errorf("%s may read %q, which reaches %s, but Readers(%s) = %q, %q", cl, f, topic, id, dev, gw)
				}
			}
		}
	}
	// The test saw the cases that matter: a device's own topics, a
	// gateway's child's.
	if checked < 6 {
		t.Fatalf("only %d readable (filter, topic) pairs checked", checked)
	}
	if dev, gw := p.Readers("c1"); dev != "c1" || gw != "g1" {
		t.Errorf("Readers(c1) = %q, %q", dev, gw)
	}
	if _, gw := p.Readers("gone"); gw != "" {
		t.Errorf("a revoked device's gateway reads for it: %q", gw)
	}
}
