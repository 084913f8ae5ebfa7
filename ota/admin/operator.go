package admin

import (
	"context"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
)

// The operator/* verbs manage the people side: operators and observers.

type operatorAddRequest struct {
	ID       string           `json:"id"`
	Role     fleet.Role       `json:"role,omitempty"`
	Auth     fleet.AuthMethod `json:"auth,omitempty"`
	Password string           `json:"password,omitempty"`
}

// auditArgs drops the password.
func (r operatorAddRequest) auditArgs() any {
	return map[string]any{"id": r.ID, "role": r.Role, "auth": r.Auth, "password_given": r.Password != ""}
}

type operatorResult struct {
	Operator fleet.Device `json:"operator"`
	// Password is returned only when the broker generated it.
	Password string `json:"password,omitempty"`
}

func operatorAdd(_ context.Context, s *Service, c *call) (any, error) {
	var req operatorAddRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req.auditArgs()
	if req.Role == "" {
		req.Role = fleet.RoleOperator
	}
	if req.Role.IsDevice() || !req.Role.Valid() {
		return nil, fail(CodeBadRequest, "operator/add takes role operator or observer, not %s (devices: device/register)", quote(string(req.Role)))
	}
	var generated string
	var secret fleet.Secret
	if req.Auth == "" || req.Auth == fleet.AuthPassword {
		pw := req.Password
		if pw == "" {
			generated = fleet.NewPassword()
			pw = generated
		}
		var err error
		if secret, err = fleet.PasswordSecret(pw); err != nil {
			return nil, err
		}
	} else if req.Password != "" {
		return nil, fail(CodeBadRequest, "auth %s takes no password", quote(string(req.Auth)))
	}
	var dev fleet.Device
	err := c.commit(func(tx store.Tx) error {
		d, err := s.fleet.Register(tx, fleet.Registration{ID: req.ID, Role: req.Role, Auth: req.Auth}, secret, c.req.Caller.ID)
		dev = d
		return err
	})
	if err != nil {
		return nil, err
	}
	return operatorResult{Operator: dev, Password: generated}, nil
}

func operatorList(_ context.Context, s *Service, c *call) (any, error) {
	var req listRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.args = req
	f, err := req.filter(fleet.RoleOperator, fleet.RoleObserver)
	if err != nil {
		return nil, err
	}
	views, next := s.fleet.List(f)
	ops := make([]fleet.Device, len(views))
	for i, v := range views {
		ops[i] = v.Device
	}
	return &page[fleet.Device]{key: "operators", items: ops, next: next, cursor: func(d fleet.Device) any { return d.ID }}, nil
}

func (s *Service) operator(id string) (*fleet.Device, error) {
	if id == "" {
		return nil, fail(CodeBadRequest, "id missing")
	}
	d, ok := s.fleet.Lookup(id)
	if !ok || d.Role.IsDevice() {
		return nil, fail(CodeNotFound, "no operator or observer %s", quote(id))
	}
	return d, nil
}

type operatorUpdateRequest struct {
	ID string `json:"id"`
	// Password sets a new password; RotatePassword generates one.
	Password       string `json:"password,omitempty"`
	RotatePassword bool   `json:"rotate_password,omitempty"`
	Reinstate      bool   `json:"reinstate,omitempty"`
}

func operatorUpdate(_ context.Context, s *Service, c *call) (any, error) {
	var req operatorUpdateRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target = req.ID
	c.args = map[string]any{"id": req.ID, "password_given": req.Password != "", "rotate_password": req.RotatePassword, "reinstate": req.Reinstate}
	if _, err := s.operator(req.ID); err != nil {
		return nil, err
	}
	if req.Password != "" && req.RotatePassword {
		return nil, fail(CodeBadRequest, "give a password or rotate_password, not both")
	}
	var generated string
	var secret fleet.Secret
	if req.Password != "" || req.RotatePassword {
		pw := req.Password
		if req.RotatePassword {
			generated = fleet.NewPassword()
			pw = generated
		}
		var err error
		if secret, err = fleet.PasswordSecret(pw); err != nil {
			return nil, err
		}
	}
	var dev fleet.Device
	err := c.commit(func(tx store.Tx) error {
		d, err := s.fleet.Update(tx, req.ID, fleet.Change{Reinstate: req.Reinstate}, secret, c.req.Caller.ID)
		dev = d
		if err == nil && !secret.IsZero() {
			// The HTTP sessions opened with the old password end with
			// the change (all but the one that asked, for its own).
			err = s.endSessions(tx, req.ID, c.req.Caller)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if !secret.IsZero() {
		// Sessions opened with the old password end. An operator that
		// changes its own password keeps the connection it asked on, so
		// that the reply with the new password reaches it (ending that
		// connection first would lose the password: a lockout).
		keep := ""
		if req.ID == c.req.Caller.ID {
			keep = c.req.Caller.Session
		}
		c.after = append(c.after, func() { s.kick.Disconnect(req.ID, keep) })
	}
	return operatorResult{Operator: dev, Password: generated}, nil
}

// operatorRevoke never locks everyone out: an operator cannot revoke
// itself, nor the last unrevoked operator. Revocations of operators are
// serialised, so that two operators revoking each other at once cannot
// both pass the check; one whose own revocation committed in the meantime
// is refused.
func operatorRevoke(ctx context.Context, s *Service, c *call) (any, error) {
	var req revokeRequest
	if err := decode(c.req.Body, &req); err != nil {
		return nil, err
	}
	c.target, c.args = req.ID, req
	op, err := s.operator(req.ID)
	if err != nil {
		return nil, err
	}
	if req.ID == c.req.Caller.ID {
		return nil, fail(CodeForbidden, "%s cannot revoke itself; another operator can", quote(req.ID))
	}
	if op.Role != fleet.RoleOperator {
		return s.revoke(c, req)
	}
	select {
	case s.ops <- struct{}{}:
		defer func() { <-s.ops }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if me, ok := s.fleet.Lookup(c.req.Caller.ID); ok && me.Revoked {
		return nil, fail(CodeForbidden, "%s was revoked while this request waited", quote(c.req.Caller.ID))
	}
	others := false
	views, _ := s.fleet.List(fleet.Filter{Roles: []fleet.Role{fleet.RoleOperator}, Revoked: new(bool), Limit: 2})
	for _, v := range views {
		if v.ID != req.ID {
			others = true
		}
	}
	if !others {
		return nil, fail(CodeBadRequest, "%s is the last operator; add another before revoking it", quote(req.ID))
	}
	return s.revoke(c, req)
}

// EnsureOperator creates the first operator on a database that has none
// (bootstrap). If password is empty one is generated. It returns whether it
// created the operator, and the password it used.
func (s *Service) EnsureOperator(ctx context.Context, id, password string) (bool, string, error) {
	var exists bool
	if err := s.db.View(context.Background(), func(tx store.Tx) error {
		var err error
		exists, err = fleet.HasRole(tx, fleet.RoleOperator)
		return err
	}); err != nil {
		return false, "", err
	}
	if exists {
		return false, "", nil
	}
	if password == "" {
		password = fleet.NewPassword()
	}
	secret, err := fleet.PasswordSecret(password)
	if err != nil {
		return false, "", err
	}
	req := Request{Caller: Caller{ID: "otamq", Role: fleet.RoleOperator, Remote: "bootstrap"}, Resource: "operator", Verb: "add"}
	c := &call{req: &req, target: id, args: map[string]any{"id": id, "role": fleet.RoleOperator, "bootstrap": true}}
	created := false
	err = s.db.Update(ctx, func(tx store.Tx) error {
		created = false
		if ok, err := fleet.HasRole(tx, fleet.RoleOperator); err != nil || ok {
			return err
		}
		created = true
		if _, err := s.fleet.Register(tx, fleet.Registration{ID: id, Role: fleet.RoleOperator, Auth: fleet.AuthPassword}, secret, "otamq"); err != nil {
			return err
		}
		return s.appendAudit(tx, c, nil)
	})
	if err != nil || !created {
		return false, "", err
	}
	return true, password, nil
}
