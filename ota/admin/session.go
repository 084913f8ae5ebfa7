package admin

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/login"
	"github.com/otamq/otamq/ota/store"
)

// Logins and sessions of the HTTP API (Options.Sessions). A login checks
// the password as an MQTT CONNECT does (fleet.Authenticate, with its
// throttle keyed on the ID and the source address); only operators and
// observers may log in. The session it creates and its audit record
// ("session/login", with the source address) are committed together.
// Refusals of a known operator or observer are on the record too; those of
// an unknown ID, of a device and throttled attempts are not (they cost no
// password check and could be sent without end), and the adapter logs them.

// maxPasswordLen bounds a login's password before it is hashed.
const maxPasswordLen = 1024

// LoginRequest is a password login.
type LoginRequest struct {
	ID       string
	Password string
	// Remote is the source address (the throttle's key, the audit's).
	Remote string
}

// LoginResult is a login's session and the token that presents it.
type LoginResult struct {
	Token   string
	Session login.Session
	Role    fleet.Role
}

// loginRefused is what every refused login is told, whatever the reason,
// so that the answer does not tell an unknown ID from a wrong password.
const loginRefused = "login refused: unknown ID, wrong password, or not an operator or observer"

// Login checks req's credentials and creates a session. Errors:
// CodeUnauthorized (any refusal), CodeRateLimited (throttled: retry after
// RetryAfterMS), CodeUnavailable.
func (s *Service) Login(ctx context.Context, req LoginRequest) (LoginResult, *Error) {
	if s.sessions == nil {
		return LoginResult{}, fail(CodeUnavailable, "logins are off")
	}
	if fleet.ValidID(req.ID) != nil || req.Password == "" || len(req.Password) > maxPasswordLen {
		return LoginResult{}, fail(CodeUnauthorized, loginRefused)
	}
	if lk, ok := s.fleet.Lookup(req.ID); !ok || lk.Role.IsDevice() {
		// No password check (device tokens are not throttled, so no
		// audit record either: they could be sent without end).
		return LoginResult{}, fail(CodeUnauthorized, loginRefused)
	}
	d, err := s.fleet.Authenticate(fleet.Credentials{ClientID: req.ID, Username: req.ID, Password: []byte(req.Password), Remote: req.Remote})
	var te *fleet.ThrottledError
	switch {
	case errors.As(err, &te):
		e := fail(CodeRateLimited, "%s; retry later", te.Error())
		e.RetryAfterMS = max(1000, te.Retry.Milliseconds()+1)
		return LoginResult{}, e
	case errors.Is(err, fleet.ErrNotFound), err == nil && d.Role.IsDevice():
		// Removed, or re-registered as something else, meanwhile.
		return LoginResult{}, fail(CodeUnauthorized, loginRefused)
	}
	c := &call{req: &Request{Caller: Caller{ID: req.ID, Remote: req.Remote}, Resource: "session", Verb: "login"},
		args: map[string]any{"transport": "http"}}
	if err != nil {
		// A known ID whose password was checked (or that is revoked).
		if lk, ok := s.fleet.Lookup(req.ID); ok {
			c.req.Caller.Role = lk.Role
		}
		aerr := fail(CodeUnauthorized, loginRefused)
		rec := &Error{Code: CodeUnauthorized, Message: err.Error()}
		if werr := s.db.Update(ctx, func(tx store.Tx) error { return s.appendAudit(tx, c, rec) }); werr != nil {
			s.log.Error("audit write failed", "action", "session/login", "actor", clip(req.ID), "err", werr)
		}
		return LoginResult{}, aerr
	}
	c.req.Caller.Role = d.Role
	var res LoginResult
	err = s.db.Update(ctx, func(tx store.Tx) error {
		token, sess, err := s.sessions.Create(tx, req.ID, req.Remote)
		if err != nil {
			return err
		}
		res = LoginResult{Token: token, Session: sess, Role: d.Role}
		c.target = sess.Handle
		c.req.Caller.Session = req.ID + fleet.SessionSep + sess.Handle
		return s.appendAudit(tx, c, nil)
	})
	if err != nil {
		return LoginResult{}, classify(err)
	}
	return res, nil
}

// SessionCaller returns the caller that token's session acts as: its
// operator or observer, with the role it has now. A session whose operator
// was removed, revoked or became something else is refused
// (CodeUnauthorized), as is an expired or unknown one. ended is closed when
// the session is deleted.
func (s *Service) SessionCaller(token, remote string) (Caller, login.Session, <-chan struct{}, *Error) {
	if s.sessions == nil {
		return Caller{}, login.Session{}, nil, fail(CodeUnavailable, "logins are off")
	}
	sess, ended, ok := s.sessions.Lookup(token)
	if !ok {
		return Caller{}, login.Session{}, nil, fail(CodeUnauthorized, "no such session, or it expired: log in")
	}
	d, ok := s.fleet.Lookup(sess.Operator)
	if !ok || d.Revoked || !(d.Role == fleet.RoleOperator || d.Role == fleet.RoleObserver) {
		return Caller{}, login.Session{}, nil, fail(CodeUnauthorized, "the session's operator is revoked or gone: log in")
	}
	c := Caller{ID: d.ID, Role: d.Role, Session: d.ID + fleet.SessionSep + sess.Handle, Remote: remote}
	return c, sess, ended, nil
}

// Logout ends token's session, on the record as "session/logout".
func (s *Service) Logout(ctx context.Context, caller Caller, token string) *Error {
	if s.sessions == nil {
		return fail(CodeUnavailable, "logins are off")
	}
	c := &call{req: &Request{Caller: caller, Resource: "session", Verb: "logout"}}
	_, handle, _ := strings.Cut(caller.Session, fleet.SessionSep)
	c.target = handle
	err := s.db.Update(ctx, func(tx store.Tx) error {
		found, err := s.sessions.Delete(tx, token)
		if err != nil {
			return err
		}
		if !found {
			return fail(CodeUnauthorized, "no such session")
		}
		return s.appendAudit(tx, c, nil)
	})
	if err != nil {
		var aerr *Error
		if errors.As(err, &aerr) {
			return aerr
		}
		return classify(err)
	}
	return nil
}

// SessionTTL is how long a login lasts (0 without sessions).
func (s *Service) SessionTTL() time.Duration {
	if s.sessions == nil {
		return 0
	}
	return s.sessions.TTL()
}

// endSessions deletes in tx the HTTP sessions of operator id, except the
// one caller asks on when it is id's own.
func (s *Service) endSessions(tx store.Tx, id string, caller Caller) error {
	if s.sessions == nil {
		return nil
	}
	keep := ""
	if caller.ID == id {
		if _, h, ok := strings.Cut(caller.Session, fleet.SessionSep); ok && strings.HasPrefix(h, login.HandlePrefix) {
			keep = h
		}
	}
	_, err := s.sessions.DeleteOperator(tx, id, keep)
	return err
}
