package hooks

import (
	"log/slog"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/fleet"
)

// ACL is the authorization hook: it asks the domain's access.Policy about
// every subscription, publish and delivery, and counts and logs refusals.
//
// Anonymous clients (connections Auth let in unauthenticated on a listener
// that allows them) are judged by the connection, not by the client ID, so
// an ID registered while such a session lasts gives it nothing: they get
// Policy.AllowedAnonymous.
type ACL struct {
	mqtt.HookBase
	policy *access.Policy
	rec    Recorder
	log    *slog.Logger

	// anon holds the anonymous connections. Every ACL check looks here,
	// on every core: a sync.Map's lookups take no lock (an RWMutex's read
	// lock is a counter both cores write, 8 % of the heartbeat path).
	anon  sync.Map // *mqtt.Client → struct{}
	marks atomic.Uint32
}

// anonSweepEvery is how many anonymous connections are marked between two
// sweeps of the set for closed ones: mochi skips OnDisconnect for a client
// whose CONNACK could not be written, so a client that resets its
// connection right after CONNECT would otherwise stay in the set for good.
const anonSweepEvery = 256

// ACLOptions configure NewACL.
type ACLOptions struct {
	Topics access.Topics
	Fleet  *fleet.Registry
	// ReadOnly reports whether an admin action ("device/list") is open to
	// observers.
	ReadOnly func(action string) bool
	Rules    []access.Rule
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
	return &ACL{policy: &access.Policy{Topics: o.Topics, Fleet: o.Fleet, ReadOnly: o.ReadOnly, Rules: o.Rules},
		rec: o.Recorder, log: o.Logger}
}

// ID implements mqtt.Hook.
func (a *ACL) ID() string { return "otamq-acl" }

// Provides implements mqtt.Hook.
func (a *ACL) Provides(b byte) bool { return b == mqtt.OnACLCheck || b == mqtt.OnDisconnect }

// Policy returns the policy the hook applies.
func (a *ACL) Policy() *access.Policy { return a.policy }

// markAnonymous records cl as an anonymous connection until it ends.
func (a *ACL) markAnonymous(cl *mqtt.Client) {
	a.anon.Store(cl, struct{}{})
	if a.marks.Add(1)%anonSweepEvery == 0 {
		a.anon.Range(func(k, _ any) bool {
			if c := k.(*mqtt.Client); c.Closed() {
				a.anon.Delete(c)
			}
			return true
		})
	}
}

// anonymousCount is how many connections the set holds.
func (a *ACL) anonymousCount() int {
	n := 0
	a.anon.Range(func(_, _ any) bool { n++; return true })
	return n
}

func (a *ACL) anonymous(cl *mqtt.Client) bool {
	_, ok := a.anon.Load(cl)
	return ok
}

// OnDisconnect implements mqtt.Hook.
func (a *ACL) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	a.anon.Delete(cl)
}

// OnACLCheck implements mqtt.Hook.
func (a *ACL) OnACLCheck(cl *mqtt.Client, filter string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	ok := false
	if a.anonymous(cl) {
		ok = a.policy.AllowedAnonymous(filter, write)
	} else {
		ok = a.policy.Allowed(cl.ID, filter, write)
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

// Allowed is the policy's Allowed: whether client id may publish to
// (write) or read filter.
func (a *ACL) Allowed(id, filter string, write bool) bool { return a.policy.Allowed(id, filter, write) }

// Readers is the policy's Readers: the clients that may receive device
// id's messages (the device, its gateway or "").
func (a *ACL) Readers(id string) (device, gateway string) { return a.policy.Readers(id) }
