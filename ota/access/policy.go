package access

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/otamq/otamq/ota/fleet"
)

// Rule grants access to topics outside the prefix, so that otamq can carry
// an application's own traffic too. Rules never widen access under the
// prefix: the contract's ACL is fixed there.
type Rule struct {
	// Filter is an MQTT topic filter; a level "{id}" stands for the client
	// ID of whoever asks.
	Filter string `yaml:"filter" json:"filter"`
	// Roles the rule applies to; empty means every registered role.
	Roles []fleet.Role `yaml:"roles" json:"roles,omitempty"`
	// Access is "read", "write" or "readwrite".
	Access string `yaml:"access" json:"access"`
}

// RoleAnonymous is the role a rule names to apply to anonymous clients
// (Policy.AllowedAnonymous). A rule without roles does not apply to them.
const RoleAnonymous fleet.Role = "anonymous"

// Validate reports what is wrong with r under prefix.
func (r Rule) Validate(prefix string) error {
	var errs []error
	f := r.Filter
	switch {
	case f == "":
		errs = append(errs, errors.New("empty filter"))
	case strings.HasPrefix(f, "+") || strings.HasPrefix(f, "#"):
		errs = append(errs, fmt.Errorf("filter %q starts with a wildcard: it would reach the %q topics", f, prefix))
	case (Topics{Prefix: prefix}).InPrefix(f):
		errs = append(errs, fmt.Errorf("filter %q is under the %q prefix, whose access the contract fixes", f, prefix))
	}
	for i, lvl := range strings.Split(f, "/") {
		if strings.Contains(lvl, "{id}") && lvl != "{id}" {
			errs = append(errs, fmt.Errorf("filter %q: {id} must be a whole level", f))
		}
		if strings.ContainsAny(lvl, "+#") && len(lvl) > 1 || lvl == "#" && i != len(strings.Split(f, "/"))-1 {
			errs = append(errs, fmt.Errorf("filter %q is not a valid MQTT filter", f))
		}
	}
	if r.Access != "read" && r.Access != "write" && r.Access != "readwrite" {
		errs = append(errs, fmt.Errorf("access %q must be read, write or readwrite", r.Access))
	}
	for _, role := range r.Roles {
		if !role.Valid() && role != RoleAnonymous {
			errs = append(errs, fmt.Errorf("role %q is not device, gateway, operator, observer or anonymous", role))
		}
	}
	return errors.Join(errs...)
}

func (r Rule) allows(d *fleet.Device, filter string, write bool) bool {
	if d.Role == RoleAnonymous && (!slices.Contains(r.Roles, RoleAnonymous) || strings.Contains(r.Filter, "{id}")) ||
		len(r.Roles) > 0 && !slices.Contains(r.Roles, d.Role) {
		return false // an anonymous client's ID proves nothing: {id} rules are not for it
	}
	if write && r.Access == "read" || !write && r.Access == "write" {
		return false
	}
	return Covers(strings.ReplaceAll(r.Filter, "{id}", d.ID), filter)
}

// Policy decides who may use which topic. Default deny. Its methods are
// safe for concurrent use (the fields are not changed after it is built).
type Policy struct {
	Topics Topics
	Fleet  *fleet.Registry
	// ReadOnly reports whether an admin action ("device/list") is open to
	// observers. Default: none is.
	ReadOnly func(action string) bool
	// Rules grant topics outside the prefix.
	Rules []Rule
}

// Allowed reports whether client clientID may publish to (write) or
// subscribe to or receive from (read) filter. An operator's session
// "ID~SUFFIX" acts as ID.
func (p *Policy) Allowed(clientID, filter string, write bool) bool {
	d, ok := p.Fleet.LookupClient(clientID)
	if !ok || d.Revoked {
		return false
	}
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		// A shared subscription: judge the filter inside it. Devices have
		// no use for one.
		_, inner, ok := strings.Cut(rest, "/")
		if !ok || d.Role.IsDevice() {
			return false
		}
		filter = inner
	}
	switch {
	case filter == "" || filter[0] == '+' || filter[0] == '#':
		// Could reach the prefix's topics of every device.
		return false
	case strings.HasPrefix(filter, "$SYS"):
		return !write && !d.Role.IsDevice() && Covers("$SYS/#", filter)
	case p.Topics.InPrefix(filter):
		if d.Role.IsDevice() {
			return p.deviceAllowed(d, filter, write)
		}
		return p.operatorAllowed(d, clientID, filter, write)
	}
	for _, r := range p.Rules {
		if r.allows(d, filter, write) {
			return true
		}
	}
	return false
}

// deviceAllowed: a device's own topics, exactly (a wildcard filter always
// matches topics that are not in the allowed set, so none is allowed), and
// for a gateway the same topics of each registered child.
func (p *Policy) deviceAllowed(d *fleet.Device, filter string, write bool) bool {
	if HasWildcard(filter) {
		return false
	}
	id, kind, ok := p.Topics.ParseDevice(filter)
	if !ok {
		return false
	}
	kinds := DeviceSubscribes
	if write {
		kinds = DevicePublishes
	}
	if !slices.Contains(kinds, kind) {
		return false
	}
	if id == d.ID {
		return true
	}
	if d.Role != fleet.RoleGateway {
		return false
	}
	child, ok := p.Fleet.Lookup(id)
	return ok && child.Parent == d.ID && child.Role == fleet.RoleDevice && !child.Revoked
}

// Readers returns the client IDs that may hold a subscription through
// which a message on device id's topic (one of its own topics under the
// prefix) reaches a subscriber: the device, and its gateway when it has
// one ("" otherwise). The filter of such a subscription is the topic itself:
// devices and gateways may not use wildcards or shared subscriptions under
// the prefix, operators and anonymous clients no device topic at all. So a
// sender that must know who would receive a device's message looks at
// these two clients' subscriptions, not at every subscriber of the topic.
// deviceAllowed and operatorAllowed must keep this true (TestReaders).
func (p *Policy) Readers(id string) (device, gateway string) {
	d, ok := p.Fleet.Lookup(id)
	if !ok || d.Revoked {
		return id, ""
	}
	return id, d.Parent
}

// operatorAllowed: operators publish admin requests and read their own
// replies (those of their connection's client ID) and the fleet events;
// observers the same, limited to reads.
func (p *Policy) operatorAllowed(d *fleet.Device, clientID, filter string, write bool) bool {
	if write {
		res, verb, ok := p.Topics.ParseAdmin(filter)
		if !ok {
			return false
		}
		return d.Role == fleet.RoleOperator || p.ReadOnly != nil && p.ReadOnly(res+"/"+verb)
	}
	return filter == p.Topics.FleetEvents() || Covers(p.Topics.RolloutSummary("#"), filter) ||
		Covers(p.Topics.ReplyPrefix(clientID)+"#", filter)
}

// anonymousDevice is what an anonymous client is to the rules.
var anonymousDevice = fleet.Device{Role: RoleAnonymous}

// AllowedAnonymous reports whether an anonymous client (a connection let in
// without credentials on a listener that allows it) may use filter: only
// rules naming RoleAnonymous, and never under the prefix or $SYS.
func (p *Policy) AllowedAnonymous(filter string, write bool) bool {
	if strings.HasPrefix(filter, "$share/") {
		_, inner, ok := strings.Cut(filter[len("$share/"):], "/")
		if !ok {
			return false
		}
		filter = inner
	}
	if filter == "" || filter[0] == '+' || filter[0] == '#' || filter[0] == '$' || p.Topics.InPrefix(filter) {
		return false
	}
	for _, r := range p.Rules {
		if r.allows(&anonymousDevice, filter, write) {
			return true
		}
	}
	return false
}
