package access

import (
	"strings"
	"testing"

	"github.com/otamq/otamq/ota/fleet"
)

func TestCovers(t *testing.T) {
	cases := []struct {
		rule, filter string
		want         bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},
		{"a/+", "a/b/c", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "a/#", true},
		{"a/#", "a/+/c", true},
		{"a/b", "a/+", false},
		{"+/b", "a/b", true},
		{"#", "anything/at/all", true},
		{"a/b/c", "a/b", false},
		{"dm/admin/reply/alice/#", "dm/admin/reply/alice/x/y", true},
		{"dm/admin/reply/alice/#", "dm/admin/reply/alicex/y", false},
	}
	for _, c := range cases {
		if got := Covers(c.rule, c.filter); got != c.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.rule, c.filter, got, c.want)
		}
	}
}

func TestParseTopics(t *testing.T) {
	tp := Topics{Prefix: "dm"}
	for topic, want := range map[string][2]string{
		"dm/d1/birth":        {"d1", KindBirth},
		"dm/d1/ota/get":      {"d1", KindGet},
		"dm/d1/ota/manifest": {"d1", KindManifest},
		"dm/d1/other":        {"", ""},
		"dm/admin/birth":     {"", ""},
		"dm/fleet/hb":        {"", ""},
		"dm//hb":             {"", ""},
		"xx/d1/hb":           {"", ""},
		"dm/d1/hb/extra":     {"", ""},
	} {
		id, kind, ok := tp.ParseDevice(topic)
		if ok != (want[0] != "") || id != want[0] || kind != want[1] {
			t.Errorf("ParseDevice(%q) = %q %q %v, want %v", topic, id, kind, ok, want)
		}
	}
	for topic, want := range map[string][2]string{
		"dm/admin/device/list":  {"device", "list"},
		"dm/admin/reply/x/y":    {"", ""},
		"dm/admin/device":       {"", ""},
		"dm/admin/device/a/b":   {"", ""},
		"dm/admin//list":        {"", ""},
		"other/admin/device/ls": {"", ""},
	} {
		res, verb, ok := tp.ParseAdmin(topic)
		if ok != (want[0] != "") || res != want[0] || verb != want[1] {
			t.Errorf("ParseAdmin(%q) = %q %q %v, want %v", topic, res, verb, ok, want)
		}
	}
}

func TestRuleValidate(t *testing.T) {
	ok := []Rule{
		{Filter: "telemetry/{id}/#", Access: "write", Roles: []fleet.Role{fleet.RoleDevice}},
		{Filter: "telemetry/#", Access: "read"},
		{Filter: "a/+/b", Access: "readwrite"},
	}
	for _, r := range ok {
		if err := r.Validate("dm"); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	bad := map[string]Rule{
		"wildcard first": {Filter: "#", Access: "read"},
		"plus first":     {Filter: "+/x", Access: "read"},
		"under prefix":   {Filter: "dm/x/#", Access: "read"},
		"prefix itself":  {Filter: "dm", Access: "read"},
		"partial id":     {Filter: "t/x{id}", Access: "read"},
		"hash not last":  {Filter: "t/#/x", Access: "read"},
		"bad access":     {Filter: "t/x", Access: "all"},
		"bad role":       {Filter: "t/x", Access: "read", Roles: []fleet.Role{"admin"}},
		"mixed wildcard": {Filter: "t/a+", Access: "read"},
		"empty":          {Access: "read"},
	}
	for name, r := range bad {
		if err := r.Validate("dm"); err == nil {
			t.Errorf("%s: %+v accepted", name, r)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%s: empty error", name)
		}
	}
}
