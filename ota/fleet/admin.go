package fleet

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"

	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/store"
)

// The methods in this file change registrations. Each runs inside a store
// transaction that the caller owns (so that its audit record commits with
// it), may run more than once (see package store), and changes memory only
// when the transaction commits.

// Registration describes a new client.
type Registration struct {
	ID   string     `json:"id"`
	Role Role       `json:"role"`
	Auth AuthMethod `json:"auth"`
	Attributes
}

// Secret is a hashed credential to store with a registration. Make it
// before the transaction with TokenSecret or PasswordSecret: hashing a
// password is slow, and must not run on the store's writer goroutine. The
// zero Secret means "none".
type Secret struct {
	kind AuthMethod
	hash string
}

// TokenSecret hashes a device token.
func TokenSecret(token string) Secret { return Secret{kind: AuthToken, hash: hashToken(token)} }

// PasswordSecret checks and hashes an operator password.
func PasswordSecret(password string) (Secret, error) {
	if len(password) < MinPasswordLen {
		return Secret{}, fmt.Errorf("%w: password shorter than %d characters", ErrInvalid, MinPasswordLen)
	}
	if len(password) > 1024 {
		return Secret{}, fmt.Errorf("%w: password longer than 1024 bytes", ErrInvalid)
	}
	return Secret{kind: AuthPassword, hash: hashPassword(password)}, nil
}

// IsZero reports whether s holds no credential.
func (s Secret) IsZero() bool { return s.kind == "" }

func (r *Registry) validateRegistration(tx store.Tx, reg *Registration) error {
	if err := ValidID(reg.ID); err != nil {
		return err
	}
	if reg.Role == "" {
		reg.Role = RoleDevice
	}
	if !reg.Role.Valid() {
		return fmt.Errorf("%w: role %s must be device, gateway, operator or observer", ErrInvalid, Quote(string(reg.Role)))
	}
	if reg.Auth == "" {
		reg.Auth = AuthToken
		if !reg.Role.IsDevice() {
			reg.Auth = AuthPassword
		}
	}
	switch {
	case reg.Role.IsDevice() && reg.Auth != AuthToken && reg.Auth != AuthCert:
		return fmt.Errorf("%w: a %s authenticates with a token or a certificate, not %s", ErrInvalid, reg.Role, Quote(string(reg.Auth)))
	case !reg.Role.IsDevice() && reg.Auth != AuthPassword && reg.Auth != AuthCert:
		return fmt.Errorf("%w: an %s authenticates with a password or a certificate, not %s", ErrInvalid, reg.Role, Quote(string(reg.Auth)))
	}
	if err := reg.Attributes.validate(); err != nil {
		return err
	}
	if !reg.Role.IsDevice() && (reg.Hardware != "" || reg.Parent != "" || len(reg.Groups) > 0) {
		return fmt.Errorf("%w: an %s has no hardware, parent or groups", ErrInvalid, reg.Role)
	}
	return r.checkParent(tx, reg.ID, reg.Role, reg.Parent)
}

// checkParent verifies that parent, if set, is a registered, unrevoked
// gateway, and that a gateway itself has no parent.
func (r *Registry) checkParent(tx store.Tx, id string, role Role, parent string) error {
	if parent == "" {
		return nil
	}
	if role != RoleDevice {
		return fmt.Errorf("%w: only devices have a parent gateway", ErrInvalid)
	}
	if parent == id {
		return fmt.Errorf("%w: %s cannot be its own parent", ErrInvalid, id)
	}
	p, err := loadRecord(tx, parent)
	if err != nil {
		return fmt.Errorf("parent %s: %w", parent, err)
	}
	if p.Role != RoleGateway {
		return fmt.Errorf("%w: parent %s is a %s, not a gateway", ErrInvalid, parent, p.Role)
	}
	if p.Revoked {
		return fmt.Errorf("%w: parent gateway %s is revoked", ErrInvalid, parent)
	}
	return nil
}

func loadRecord(tx store.Tx, id string) (*record, error) {
	v := tx.Get(bucketClients, []byte(id))
	if v == nil {
		return nil, ErrNotFound
	}
	var rec record
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("decode %s: %w", id, err)
	}
	return &rec, nil
}

// put writes rec in tx, makes it the registry's once tx commits, and
// publishes ev (nil: none) in tx.
func (r *Registry) put(tx store.Tx, rec *record, ev event.Event) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode %s: %w", rec.ID, err)
	}
	if err := tx.Put(bucketClients, []byte(rec.ID), v); err != nil {
		return err
	}
	tx.OnCommit(func() {
		r.internRecord(rec)
		var old *record
		var e *entry
		r.byID.upsert(rec.ID, func(x *entry) { old, e = x.rec.Load(), x; x.rec.Store(rec) })
		from, to := indexedParent(old), indexedParent(rec)
		r.kids.move(rec.ID, from, to)
		if old != nil && old.Parent != "" && (rec.Parent != old.Parent || rec.Revoked) {
			// The old gateway may no longer act for it.
			reason := ReasonGatewayChanged
			if rec.Revoked {
				reason = ReasonKicked
			}
			r.cutChild(e, old.Parent, reason)
		}
	})
	if ev == nil {
		return nil
	}
	return r.feed.PublishTx(tx, ev)
}

// Register adds a client. Device and gateway tokens and operator passwords
// come in secret; a certificate-only client has none. Errors wrap
// ErrInvalid, ErrExists or (for a bad parent) ErrNotFound.
func (r *Registry) Register(tx store.Tx, reg Registration, secret Secret, actor string) (Device, error) {
	if err := r.validateRegistration(tx, &reg); err != nil {
		return Device{}, err
	}
	if tx.Get(bucketClients, []byte(reg.ID)) != nil {
		return Device{}, fmt.Errorf("%s: %w", reg.ID, ErrExists)
	}
	if err := secretFits(reg.ID, reg.Auth, secret); err != nil {
		return Device{}, err
	}
	now := r.now().UTC()
	rec := &record{
		Device: Device{
			ID: reg.ID, Role: reg.Role, Auth: reg.Auth,
			Hardware: reg.Hardware, Region: reg.Region, Connectivity: reg.Connectivity,
			Groups: normalizeGroups(reg.Groups), Tags: maps.Clone(reg.Tags), Parent: reg.Parent,
			Created: now, Updated: now,
		},
		Secret: secret.hash,
	}
	ev := event.Registered{Base: event.Base{ID: reg.ID, At: now}, Role: string(reg.Role), Actor: actor}
	if err := r.put(tx, rec, ev); err != nil {
		return Device{}, err
	}
	return rec.Device, nil
}

// Change is a partial update of a registration: nil fields stay as they are.
type Change struct {
	Hardware     *string            `json:"hardware,omitempty"`
	Region       *string            `json:"region,omitempty"`
	Connectivity *string            `json:"connectivity,omitempty"`
	Groups       *[]string          `json:"groups,omitempty"`
	Tags         *map[string]string `json:"tags,omitempty"`
	Parent       *string            `json:"parent,omitempty"`
	// Reinstate lifts a revocation. It needs a new secret.
	Reinstate bool `json:"reinstate,omitempty"`
}

// Update applies ch to id and, if secret holds a token or password, replaces
// the credential. Errors wrap ErrNotFound or ErrInvalid.
func (r *Registry) Update(tx store.Tx, id string, ch Change, secret Secret, actor string) (Device, error) {
	old, err := loadRecord(tx, id)
	if err != nil {
		return Device{}, fmt.Errorf("%s: %w", id, err)
	}
	rec := *old
	a := Attributes{Hardware: rec.Hardware, Region: rec.Region, Connectivity: rec.Connectivity,
		Groups: rec.Groups, Tags: rec.Tags, Parent: rec.Parent}
	if ch.Hardware != nil {
		a.Hardware = *ch.Hardware
	}
	if ch.Region != nil {
		a.Region = *ch.Region
	}
	if ch.Connectivity != nil {
		a.Connectivity = *ch.Connectivity
	}
	if ch.Groups != nil {
		a.Groups = *ch.Groups
	}
	if ch.Tags != nil {
		a.Tags = *ch.Tags
	}
	if ch.Parent != nil {
		a.Parent = *ch.Parent
	}
	if err := a.validate(); err != nil {
		return Device{}, err
	}
	if !rec.Role.IsDevice() && (a.Hardware != "" || a.Parent != "" || len(a.Groups) > 0) {
		return Device{}, fmt.Errorf("%w: an %s has no hardware, parent or groups", ErrInvalid, rec.Role)
	}
	if a.Parent != rec.Parent {
		if err := r.checkParent(tx, id, rec.Role, a.Parent); err != nil {
			return Device{}, err
		}
	}
	rec.Hardware, rec.Region, rec.Connectivity = a.Hardware, a.Region, a.Connectivity
	rec.Groups, rec.Tags, rec.Parent = normalizeGroups(a.Groups), maps.Clone(a.Tags), a.Parent
	if len(rec.Tags) == 0 {
		rec.Tags = nil
	}
	if !secret.IsZero() {
		if err := secretFits(id, rec.Auth, secret); err != nil {
			return Device{}, err
		}
		rec.Secret = secret.hash
	}
	if ch.Reinstate {
		if !rec.Revoked {
			return Device{}, fmt.Errorf("%w: %s is not revoked", ErrInvalid, id)
		}
		if rec.Auth != AuthCert && secret.IsZero() {
			return Device{}, fmt.Errorf("%w: reinstating %s needs a new credential (its old one may have leaked)", ErrInvalid, id)
		}
		rec.Revoked, rec.RevokedAt, rec.RevokeReason = false, nil, ""
	}
	now := r.now().UTC()
	rec.Updated = now
	if err := r.put(tx, &rec, event.Updated{Base: event.Base{ID: id, At: now}, Role: string(rec.Role), Actor: actor}); err != nil {
		return Device{}, err
	}
	return rec.Device, nil
}

// Revoke marks id revoked: it can no longer connect, and the caller should
// disconnect it. Revoking twice is not an error (the first time and reason
// are kept).
func (r *Registry) Revoke(tx store.Tx, id, reason, actor string) (Device, error) {
	old, err := loadRecord(tx, id)
	if err != nil {
		return Device{}, fmt.Errorf("%s: %w", id, err)
	}
	if len(reason) > MaxReasonLen {
		return Device{}, fmt.Errorf("%w: reason is %d bytes, limit %d", ErrInvalid, len(reason), MaxReasonLen)
	}
	if old.Revoked {
		return old.Device, nil
	}
	rec := *old
	now := r.now().UTC()
	rec.Revoked, rec.RevokedAt, rec.RevokeReason, rec.Updated = true, &now, strings.TrimSpace(reason), now
	if err := r.put(tx, &rec, event.Revoked{Base: event.Base{ID: id, At: now}, Role: string(rec.Role), Actor: actor,
		Reason: rec.RevokeReason}); err != nil {
		return Device{}, err
	}
	return rec.Device, nil
}

// HasRole reports whether any unrevoked client of role is registered,
// reading the transaction (used to decide whether to bootstrap an operator).
func HasRole(tx store.Tx, role Role) (bool, error) {
	found := false
	err := tx.Scan(bucketClients, nil, false, func(_, v []byte) error {
		var rec record
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		if rec.Role == role && !rec.Revoked {
			found = true
			return store.ErrStop
		}
		return nil
	})
	return found, err
}

// secretFits checks that secret is the kind of credential auth needs.
func secretFits(id string, auth AuthMethod, secret Secret) error {
	switch {
	case auth == AuthCert && !secret.IsZero():
		return fmt.Errorf("%w: %s authenticates with a certificate only; it has no token or password", ErrInvalid, id)
	case auth != AuthCert && secret.kind != auth:
		return fmt.Errorf("%w: %s authenticates with a %s; none given", ErrInvalid, id, auth)
	}
	return nil
}
