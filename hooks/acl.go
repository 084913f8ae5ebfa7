package hooks

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

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

// RoleAnonymous is the role a rule names to apply to anonymous clients
// (ACLOptions.Anonymous). A rule without roles does not apply to them.
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
	return covers(strings.ReplaceAll(r.Filter, "{id}", d.ID), filter)
}

// ACL is the authorization hook: default deny, per docs/PROTOCOL.md
// ("Topics") and docs/OPERATORS.md ("Identities and access"). It answers
// both subscription checks (a filter) and delivery and publish checks (a
// topic).
//
// Anonymous clients (connections Auth let in unauthenticated on a listener
// that allows them) are judged by the connection, not by the client ID, so
// an ID registered while such a session lasts gives it nothing: they get
// the rules that name RoleAnonymous, outside the prefix only, never $SYS.
type ACL struct {
	mqtt.HookBase
	topics   Topics
	fleet    *fleet.Registry
	readOnly func(action string) bool
	rules    []Rule
	rec      Recorder
	log      *slog.Logger

	// anonMu guards anon, the anonymous connections.
	anonMu sync.RWMutex
	anon   map[*mqtt.Client]struct{}
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
	return &ACL{topics: o.Topics, fleet: o.Fleet, readOnly: o.ReadOnly, rules: o.Rules, rec: o.Recorder, log: o.Logger,
		anon: make(map[*mqtt.Client]struct{})}
}

// ID implements mqtt.Hook.
func (a *ACL) ID() string { return "otamq-acl" }

// Provides implements mqtt.Hook.
func (a *ACL) Provides(b byte) bool { return b == mqtt.OnACLCheck || b == mqtt.OnDisconnect }

// markAnonymous records cl as an anonymous connection until it ends.
func (a *ACL) markAnonymous(cl *mqtt.Client) {
	a.anonMu.Lock()
	a.anon[cl] = struct{}{}
	a.anonMu.Unlock()
}

func (a *ACL) anonymous(cl *mqtt.Client) bool {
	a.anonMu.RLock()
	_, ok := a.anon[cl]
	a.anonMu.RUnlock()
	return ok
}

// OnDisconnect implements mqtt.Hook.
func (a *ACL) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	a.anonMu.Lock()
	delete(a.anon, cl)
	a.anonMu.Unlock()
}

// anonymousDevice is what an anonymous client is to the rules.
var anonymousDevice = fleet.Device{Role: RoleAnonymous}

// AllowedAnonymous reports whether an anonymous client may use filter:
// only rules naming RoleAnonymous, and never under the prefix or $SYS.
func (a *ACL) AllowedAnonymous(filter string, write bool) bool {
	if strings.HasPrefix(filter, "$share/") {
		_, inner, ok := strings.Cut(filter[len("$share/"):], "/")
		if !ok {
			return false
		}
		filter = inner
	}
	if filter == "" || filter[0] == '+' || filter[0] == '#' || filter[0] == '$' || a.topics.InPrefix(filter) {
		return false
	}
	for _, r := range a.rules {
		if r.allows(&anonymousDevice, filter, write) {
			return true
		}
	}
	return false
}

// OnACLCheck implements mqtt.Hook.
func (a *ACL) OnACLCheck(cl *mqtt.Client, filter string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	ok := false
	if a.anonymous(cl) {
		ok = a.AllowedAnonymous(filter, write)
	} else {
		ok = a.Allowed(cl.ID, filter, write)
	}
	if ok {
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
