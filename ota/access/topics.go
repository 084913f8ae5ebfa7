package access

import (
	"strings"
)

// Device topic kinds (docs/PROTOCOL.md), the part after "{prefix}/{id}/".
const (
	KindBirth    = "birth"
	KindHB       = "hb"
	KindEvent    = "ev"
	KindGet      = "ota/get"
	KindManifest = "ota/manifest"
	KindBlock    = "ota/blk"
	KindCmd      = "cmd"
)

// DevicePublishes and DeviceSubscribes are what a device may do on its own
// topics.
var (
	DevicePublishes  = []string{KindBirth, KindHB, KindEvent, KindGet}
	DeviceSubscribes = []string{KindManifest, KindBlock, KindCmd}
)

// DefaultPrefix is the topic prefix of the contract.
const DefaultPrefix = "dm"

// Topics is the topic scheme under one prefix.
type Topics struct {
	Prefix string
}

// Device returns the topic of kind for device id.
func (t Topics) Device(id, kind string) string { return t.Prefix + "/" + id + "/" + kind }

// FleetEvents is the topic of fleet events.
func (t Topics) FleetEvents() string { return t.Prefix + "/fleet/events" }

// RolloutSummary is the topic of rollout id's summaries (otactl rollout
// watch): its whole state, when it changed, about once a second at most.
func (t Topics) RolloutSummary(id string) string { return t.Prefix + "/fleet/rollouts/" + id }

// AdminRequest is the topic of an admin request.
func (t Topics) AdminRequest(resource, verb string) string {
	return t.Prefix + "/admin/" + resource + "/" + verb
}

// ReplyPrefix is the start of every reply topic of client id.
func (t Topics) ReplyPrefix(id string) string { return t.Prefix + "/admin/reply/" + id + "/" }

// ParseDevice splits a device topic into device ID and kind. It reports
// false for anything that is not "{prefix}/{id}/{kind}" with a known kind
// (including the admin and fleet topics).
func (t Topics) ParseDevice(topic string) (id, kind string, ok bool) {
	rest, ok := cutLevel(topic, t.Prefix)
	if !ok {
		return "", "", false
	}
	id, kind, ok = strings.Cut(rest, "/")
	if !ok || id == "" || id == "admin" || id == "fleet" {
		return "", "", false
	}
	switch kind {
	case KindBirth, KindHB, KindEvent, KindGet, KindManifest, KindBlock, KindCmd:
		return id, kind, true
	}
	return "", "", false
}

// ParseAdmin splits an admin request topic "{prefix}/admin/{resource}/{verb}".
// Reply topics are not requests.
func (t Topics) ParseAdmin(topic string) (resource, verb string, ok bool) {
	rest, ok := cutLevel(topic, t.Prefix)
	if !ok {
		return "", "", false
	}
	if rest, ok = cutLevel(rest, "admin"); !ok {
		return "", "", false
	}
	resource, verb, ok = strings.Cut(rest, "/")
	if !ok || resource == "" || verb == "" || resource == "reply" || strings.ContainsAny(verb, "/+#") || strings.ContainsAny(resource, "+#") {
		return "", "", false
	}
	return resource, verb, true
}

// InPrefix reports whether a topic or filter lies under the prefix, i.e.
// its first level is the prefix itself.
func (t Topics) InPrefix(filter string) bool {
	_, ok := cutLevel(filter, t.Prefix)
	return ok || filter == t.Prefix
}

// cutLevel returns topic without its first level if that level is first
// (without allocating, as it runs for every message).
func cutLevel(topic, first string) (string, bool) {
	if len(topic) > len(first) && topic[len(first)] == '/' && topic[:len(first)] == first {
		return topic[len(first)+1:], true
	}
	return "", false
}

// HasWildcard reports whether filter contains + or #.
func HasWildcard(filter string) bool {
	for i := 0; i < len(filter); i++ {
		if c := filter[i]; c == '+' || c == '#' {
			return true
		}
	}
	return false
}

// Covers reports whether every topic that filter f can match is also matched
// by filter r. With f a topic name (no wildcards) it is plain matching.
//
// The rules, level by level: r's "#" covers whatever follows (including
// nothing); r's "+" covers one level of f that is a name or "+", not "#";
// a name in r covers only the same name. f may not be longer than r unless r
// ends in "#".
func Covers(r, f string) bool {
	rl := strings.Split(r, "/")
	fl := strings.Split(f, "/")
	for i, rv := range rl {
		if rv == "#" {
			return true
		}
		if i >= len(fl) {
			return false
		}
		fv := fl[i]
		switch {
		case fv == "#":
			return false
		case rv == "+":
		case rv != fv:
			return false
		}
	}
	return len(fl) == len(rl)
}
