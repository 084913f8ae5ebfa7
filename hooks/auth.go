package hooks

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/fleet"
)

// Auth authenticates connections against the fleet registry.
//
// mochi answers a failed OnConnectAuthenticate with "bad user name or
// password" (0x86 / v3 4), but the contract (docs/OPERATORS.md, "Identities
// and access") says "not authorized" (0x87 / v3 5). So the decision is made in OnConnect, which
// runs just before: on refusal it writes the CONNACK itself and returns an
// error, which makes mochi close the connection without a CONNACK of its
// own. OnConnectAuthenticate then only confirms what OnConnect let through.
//
// Every refusal is answered RefusalDelay after the CONNECT arrived (or, on
// a machine so loaded that a password check takes longer, a little more than
// a check takes now), whatever its reason: an unknown ID is refused at once,
// a wrong operator password after a 20 ms hash and a wrong device token
// after a microsecond, and without the delay the time of the answer would
// tell which IDs are operators or devices. (The delay is a parked goroutine,
// no CPU.)
type Auth struct {
	mqtt.HookBase
	srv   *mqtt.Server
	fleet *fleet.Registry
	acl   *ACL
	rec   Recorder
	log   *slog.Logger
	// RefusalDelay is the least time before a refusal is answered.
	// NewAuth sets DefaultRefusalDelay.
	RefusalDelay time.Duration
	// Anonymous holds the IDs of the listeners ("tcp", "tls") on which a
	// client whose ID is not registered connects anonymously instead of
	// being refused. Default none.
	Anonymous map[string]bool
}

// reservedAnonymous are client IDs an anonymous client may not take:
// mochi's inline client, and the broker's own topic levels.
var reservedAnonymous = []string{"inline", "admin", "fleet"}

// DefaultRefusalDelay is well above an operator password check (about
// 20 ms, 50 ms under the race detector) on an idle machine.
const DefaultRefusalDelay = 200 * time.Millisecond

// refusalDelay is the time a refusal takes at least: RefusalDelay, or more
// when password checks take longer now (a loaded machine), so that a
// refusal without a check still looks like one with.
func (a *Auth) refusalDelay() time.Duration {
	return max(a.RefusalDelay, a.fleet.PasswordCheckTime()*5/4)
}

// NewAuth returns the authentication hook. acl judges Last Will topics.
func NewAuth(srv *mqtt.Server, reg *fleet.Registry, acl *ACL, rec Recorder, log *slog.Logger) *Auth {
	if rec == nil {
		rec = NopRecorder{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Auth{srv: srv, fleet: reg, acl: acl, rec: rec, log: log, RefusalDelay: DefaultRefusalDelay}
}

// ID implements mqtt.Hook.
func (a *Auth) ID() string { return "otamq-auth" }

// Provides implements mqtt.Hook.
func (a *Auth) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnConnectAuthenticate
}

// ErrConnectionRefused is returned from OnConnect after the refusal's
// CONNACK was sent; mochi then closes the connection.
var ErrConnectionRefused = errors.New("connection refused")

// OnConnect implements mqtt.Hook: it authenticates the client.
func (a *Auth) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	start := time.Now()
	c := fleet.Credentials{
		ClientID: cl.ID,
		Username: string(pk.Connect.Username),
		Password: pk.Connect.Password,
		Remote:   cl.Net.Remote,
	}
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		// The handshake has completed by the time CONNECT was read, and
		// the certificate was verified against the fleet CA.
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			c.HasCert = true
			c.CertCN = certs[0].Subject.CommonName
		}
	}
	_, err := a.fleet.AuthenticateClient(c) // the client ID may be an operator session, ID~SUFFIX
	if errors.Is(err, fleet.ErrNotFound) && a.Anonymous[cl.Net.Listener] && !slices.Contains(reservedAnonymous, cl.ID) {
		return a.anonymous(cl, start)
	}
	reason := ""
	switch {
	case err == nil:
		if w := &cl.Properties.Will; w.Flag == 1 {
			if !a.acl.Allowed(cl.ID, w.TopicName, true) {
				reason = RejectWillTopic
				err = fmt.Errorf("last will topic %.128q is not one the client may publish to", w.TopicName)
			} else if werr := checkWill(a.acl.policy.Topics, w.TopicName, w.Payload); werr != nil {
				reason, err = RejectWillPayload, werr
			}
		}
	case errors.Is(err, fleet.ErrNotFound):
		reason = RejectUnknownClient
	case errors.Is(err, fleet.ErrIdentityMismatch):
		reason = RejectIDMismatch
	case errors.Is(err, fleet.ErrRevoked):
		reason = RejectRevoked
	case errors.Is(err, fleet.ErrThrottled):
		reason = RejectThrottled
		var te *fleet.ThrottledError
		if errors.As(err, &te) {
			a.rec.LoginThrottled(te.Scope)
		}
	default:
		reason = RejectBadCredentials
	}
	if reason == "" {
		return nil
	}
	return a.refuse(cl, start, reason, err)
}

// anonymous lets cl in as an anonymous client, or refuses its Will.
func (a *Auth) anonymous(cl *mqtt.Client, start time.Time) error {
	if w := &cl.Properties.Will; w.Flag == 1 && !a.acl.policy.AllowedAnonymous(w.TopicName, true) {
		return a.refuse(cl, start, RejectWillTopic, fmt.Errorf("last will topic %.128q is not one an anonymous client may publish to", w.TopicName))
	}
	a.acl.markAnonymous(cl)
	a.rec.Anonymous()
	a.log.Debug("anonymous client connected", "client", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener)
	return nil
}

// refuse answers a refused CONNECT, after the uniform delay, and returns
// the error that makes mochi close the connection.
func (a *Auth) refuse(cl *mqtt.Client, start time.Time, reason string, err error) error {
	a.rec.Rejected(reason)
	a.log.Info("connection refused", "client", cl.ID, "remote", cl.Net.Remote, "reason", reason, "err", err)
	code := packets.ErrNotAuthorized
	if reason == RejectWillPayload {
		code = packets.ErrPayloadFormatInvalid
	}
	if cl.Properties.ProtocolVersion < 5 {
		// mochi has no v3 mapping for 0x87 and would send it raw, which a
		// v3 client cannot parse; 0x86 is mapped to v3's 5, "not
		// authorized".
		code = packets.ErrBadUsernameOrPassword
	}
	time.Sleep(time.Until(start.Add(a.refusalDelay())))
	if werr := a.srv.SendConnack(cl, code, false, nil); werr != nil {
		a.log.Debug("refusal connack not sent", "client", cl.ID, "err", werr)
	}
	return fmt.Errorf("%w: %s", ErrConnectionRefused, reason)
}

// OnConnectAuthenticate implements mqtt.Hook. Every client that reaches it
// passed OnConnect.
func (a *Auth) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
