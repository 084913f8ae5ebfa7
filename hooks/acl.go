package hooks

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/otamq/otamq/ota/fleet"
)

// Rule grants access to topics outside the prefix, so that otamq can carry
// an application's own traffic too. Rules never widen access under the
// prefix: the contract's ACL is fixed there.
type Rule struct {
	// Filter is an MQTT topic filter; a level "{id}" stands for the client
	// ID of whoever asks.
	Filter string `yaml:"filter" json:"filter"`
	// Roles the rule applies to; empty means every role.
	Roles []fleet.Role `yaml:"roles" json:"roles,omitempty"`
	// Access is "read", "write" or "readwrite".
	Access string `yaml:"access" json:"access"`
}

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
		if !role.Valid() {
			errs = append(errs, fmt.Errorf("role %q is not device, gateway, operator or observer", role))
		}
	}
	return errors.Join(errs...)
}

func (r Rule) allows(d *fleet.Device, filter string, write bool) bool {
	if len(r.Roles) > 0 && !slices.Contains(r.Roles, d.Role) {
		return false
	}
	if write && r.Access == "read" || !write && r.Access == "write" {
		return false
	}
	return covers(strings.ReplaceAll(r.Filter, "{id}", d.ID), filter)
}

// ACL is the authorization hook: default deny, per DESIGN.md §3. It answers
// both subscription checks (a filter) and delivery and publish checks (a
// topic).
type ACL struct {
	mqtt.HookBase
	topics   Topics
	fleet    *fleet.Registry
	readOnly func(action string) bool
	rules    []Rule
	rec      Recorder
	log      *slog.Logger
}

// ACLOptions configure NewACL.
type ACLOptions struct {
	Topics Topics
	Fleet  *fleet.Registry
	// ReadOnly reports whether an admin action ("device/list") is open to
	// observers.
	ReadOnly func(action string) bool
	Rules    []Rule
	Recorder Recorder
	Logger   *slog.Logger
}

// NewACL returns the ACL hook.
func NewACL(o ACLOptions) *ACL {
	if o.Recorder == nil {
		o.Recorder = NopRecorder{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReadOnly == nil {
		o.ReadOnly = func(string) bool { return false }
	}
	return &ACL{topics: o.Topics, fleet: o.Fleet, readOnly: o.ReadOnly, rules: o.Rules, rec: o.Recorder, log: o.Logger}
}

// ID implements mqtt.Hook.
func (a *ACL) ID() string { return "otamq-acl" }

// Provides implements mqtt.Hook.
func (a *ACL) Provides(b byte) bool { return b == mqtt.OnACLCheck }

// OnACLCheck implements mqtt.Hook.
func (a *ACL) OnACLCheck(cl *mqtt.Client, filter string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if a.Allowed(cl.ID, filter, write) {
		return true
	}
	if write {
		a.rec.Rejected(RejectACLPublish)
	} else {
		a.rec.Rejected(RejectACLSubscribe)
	}
	a.log.Debug("acl denied", "client", cl.ID, "filter", filter, "write", write)
	return false
}

// Allowed reports whether client id may publish to (write) or subscribe to
// or receive from (read) filter.
func (a *ACL) Allowed(id, filter string, write bool) bool {
	d, ok := a.fleet.LookupClient(id) // an operator session ID~SUFFIX acts as ID
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
		return !write && !d.Role.IsDevice() && covers("$SYS/#", filter)
	case a.topics.InPrefix(filter):
		if d.Role.IsDevice() {
			return a.deviceAllowed(d, filter, write)
		}
		return a.operatorAllowed(d, id, filter, write)
	}
	for _, r := range a.rules {
		if r.allows(d, filter, write) {
			return true
		}
	}
	return false
}

// deviceAllowed: a device's own topics, exactly (a wildcard filter always
// matches topics that are not in the allowed set, so none is allowed), and
// for a gateway the same topics of each registered child.
func (a *ACL) deviceAllowed(d *fleet.Device, filter string, write bool) bool {
	if hasWildcard(filter) {
		return false
	}
	id, kind, ok := a.topics.ParseDevice(filter)
	if !ok {
		return false
	}
	kinds := deviceSubscribes
	if write {
		kinds = devicePublishes
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
	child, ok := a.fleet.Lookup(id)
	return ok && child.Parent == d.ID && child.Role == fleet.RoleDevice && !child.Revoked
}

// operatorAllowed: operators publish admin requests and read their own
// replies (those of their connection's client ID) and the fleet events;
// observers the same, limited to reads.
func (a *ACL) operatorAllowed(d *fleet.Device, clientID, filter string, write bool) bool {
	if write {
		res, verb, ok := a.topics.ParseAdmin(filter)
		if !ok {
			return false
		}
		return d.Role == fleet.RoleOperator || a.readOnly(res+"/"+verb)
	}
	return filter == a.topics.FleetEvents() || covers(a.topics.ReplyPrefix(clientID)+"#", filter)
}
