package fleet

import (
	"fmt"
	"strings"
)

// Operator sessions. An operator or observer may connect several times at
// once (parallel otactl runs, a dashboard and a shell) under client IDs
// "ID~SUFFIX", authenticating as ID: username ID and ID's password, or a
// certificate whose common name is ID. Such a connection acts as ID in
// everything (roles, audit) except its reply topics, which are its own. The
// separator cannot occur in a registered ID (the ID pattern in docs/PROTOCOL.md), so a
// session ID never names a registered client, and devices and gateways
// never have sessions: their client ID is their identity.

// SessionSep separates an operator's ID from a session suffix.
const SessionSep = "~"

// MaxSessionSuffixLen bounds a session suffix; it uses the characters of
// an ID.
const MaxSessionSuffixLen = 32

// SplitSession splits a session client ID "ID~SUFFIX" into ID. It reports
// false for any other client ID, including a malformed session ID (empty
// or overlong suffix, other characters, a second separator).
func SplitSession(clientID string) (id string, ok bool) {
	id, suffix, ok := strings.Cut(clientID, SessionSep)
	if !ok || len(suffix) == 0 || len(suffix) > MaxSessionSuffixLen || !idPattern.MatchString(suffix) || ValidID(id) != nil {
		return "", false
	}
	return id, true
}

// LookupClient returns the registration a connection with client ID
// clientID acts as: clientID's own or, for a session ID "ID~SUFFIX", the
// operator or observer ID's (never a device's or gateway's). The Device is
// shared: never modify it.
func (r *Registry) LookupClient(clientID string) (*Device, bool) {
	// A registered ID has no separator: the ACL's hot path (every message
	// of every device) costs one lookup, as before sessions.
	if d, ok := r.Lookup(clientID); ok {
		return d, true
	}
	return r.lookupSession(clientID)
}

func (r *Registry) lookupSession(clientID string) (*Device, bool) {
	id, ok := SplitSession(clientID)
	if !ok {
		return nil, false
	}
	d, found := r.Lookup(id)
	if !found || d.Role.IsDevice() {
		return nil, false
	}
	return d, true
}

// AuthenticateClient is Authenticate for a connection: c.ClientID may be a
// session ID "ID~SUFFIX" of an operator or observer, which authenticates
// with ID's credentials. A session ID of a device or gateway is refused
// with ErrIdentityMismatch before any credential is checked.
func (r *Registry) AuthenticateClient(c Credentials) (*Device, error) {
	id, ok := SplitSession(c.ClientID)
	if !ok {
		return r.Authenticate(c)
	}
	if d, found := r.Lookup(id); found && d.Role.IsDevice() {
		return nil, fmt.Errorf("%w: %s is a %s, which has no sessions", ErrIdentityMismatch, id, d.Role)
	}
	c.ClientID = id
	return r.Authenticate(c)
}
