package hooks

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/fleet"
)

// Auth authenticates connections against the fleet registry.
//
// mochi answers a failed OnConnectAuthenticate with "bad user name or
// password" (0x86 / v3 4), but the contract (DESIGN.md §2) says "not
// authorized" (0x87 / v3 5). So the decision is made in OnConnect, which
// runs just before: on refusal it writes the CONNACK itself and returns an
// error, which makes mochi close the connection without a CONNACK of its
// own. OnConnectAuthenticate then only confirms what OnConnect let through.
type Auth struct {
	mqtt.HookBase
	srv   *mqtt.Server
	fleet *fleet.Registry
	acl   *ACL
	rec   Recorder
	log   *slog.Logger
}

// NewAuth returns the authentication hook. acl judges Last Will topics.
func NewAuth(srv *mqtt.Server, reg *fleet.Registry, acl *ACL, rec Recorder, log *slog.Logger) *Auth {
	if rec == nil {
		rec = NopRecorder{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Auth{srv: srv, fleet: reg, acl: acl, rec: rec, log: log}
}

// ID implements mqtt.Hook.
func (a *Auth) ID() string { return "otamq-auth" }

// Provides implements mqtt.Hook.
func (a *Auth) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnConnectAuthenticate
}

// errRefused is returned from OnConnect after the CONNACK was sent.
var errRefused = errors.New("connection refused")

// OnConnect implements mqtt.Hook: it authenticates the client.
func (a *Auth) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	c := fleet.Credentials{
		ClientID: cl.ID,
		Username: string(pk.Connect.Username),
		Password: pk.Connect.Password,
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
	reason := ""
	switch {
	case err == nil:
		if cl.Properties.Will.Flag == 1 && !a.acl.Allowed(cl.ID, cl.Properties.Will.TopicName, true) {
			reason = RejectWillTopic
			err = fmt.Errorf("last will topic %q is not one the client may publish to", cl.Properties.Will.TopicName)
		}
	case errors.Is(err, fleet.ErrNotFound):
		reason = RejectUnknownClient
	case errors.Is(err, fleet.ErrIdentityMismatch):
		reason = RejectIDMismatch
	case errors.Is(err, fleet.ErrRevoked):
		reason = RejectRevoked
	default:
		reason = RejectBadCredentials
	}
	if reason == "" {
		return nil
	}
	a.rec.Rejected(reason)
	a.log.Info("connection refused", "client", cl.ID, "remote", cl.Net.Remote, "reason", reason, "err", err)
	code := packets.ErrNotAuthorized
	if cl.Properties.ProtocolVersion < 5 {
		// mochi has no v3 mapping for 0x87 and would send it raw, which a
		// v3 client cannot parse; 0x86 is mapped to v3's 5, "not
		// authorized".
		code = packets.ErrBadUsernameOrPassword
	}
	if werr := a.srv.SendConnack(cl, code, false, nil); werr != nil {
		a.log.Debug("refusal connack not sent", "client", cl.ID, "err", werr)
	}
	return fmt.Errorf("%w: %s", errRefused, reason)
}

// OnConnectAuthenticate implements mqtt.Hook. Every client that reaches it
// passed OnConnect.
func (a *Auth) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
