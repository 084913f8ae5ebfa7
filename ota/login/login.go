// Package login keeps the login sessions of the HTTP API: an operator or
// observer logs in once with its password and then presents a session
// token (a bearer token, or a cookie in a browser) instead.
//
// A token is 256 random bits; the store keeps only its SHA-256 hash (in the
// bucket login_sessions, one JSON record per session), so a copy of the
// database file lets nobody in. Sessions survive a broker restart. Each
// session has a public handle (the audit log's session) that names it
// without being a credential, and a CSRF token that a browser sends back in
// a header with every request that changes state.
//
// A session ends when it expires (Options.TTL after its login), when it is
// deleted (logout), when its operator's credentials change or are revoked
// (DeleteOperator, in the transaction of that change), or when its operator
// logs in more than Options.MaxPerOperator times (the oldest goes). Changes
// are made in the caller's store transaction and reach memory when it
// commits (Tx.OnCommit), so memory never shows a session the disk does not
// hold. Ended reports a session's end to those that hold it open (an event
// stream).
//
// Policy (who may log in, and the audit record of a login) is ota/admin's;
// this package only keeps sessions.
package login

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/store"
)

// Bucket holds the sessions, keyed by the SHA-256 of their token.
const Bucket = "login_sessions"

// Defaults of Options.
const (
	DefaultTTL            = 12 * time.Hour
	DefaultMaxPerOperator = 16
)

// HandlePrefix starts every session handle, so that an audit record's
// session tells an HTTP session from an MQTT one (ID~SUFFIX).
const HandlePrefix = "http-"

// ErrInvalid is returned for a session that cannot be created (an empty
// operator).
var ErrInvalid = errors.New("login: invalid session")

// Options configure Open. The zero value means all defaults.
type Options struct {
	// Clock is the time. Default clock.System().
	Clock clock.Clock
	// TTL is how long a session lasts from its login. Default DefaultTTL.
	TTL time.Duration
	// MaxPerOperator bounds the sessions of one operator or observer; a
	// login beyond it ends that operator's oldest session. Default
	// DefaultMaxPerOperator.
	MaxPerOperator int
}

// Session is one login. It is a value: the store's copy is never shared.
type Session struct {
	// Handle names the session publicly (audit records, logs); it is no
	// credential.
	Handle   string    `json:"handle"`
	Operator string    `json:"operator"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
	// Remote is the address the login came from.
	Remote string `json:"remote,omitempty"`
	// CSRF is the token a browser must send back with requests that
	// change state.
	CSRF string `json:"csrf"`
}

// entry is a session in memory.
type entry struct {
	s     Session
	hash  [sha256.Size]byte
	ended chan struct{} // closed when the session is gone
}

// Store keeps sessions. Its methods are safe for concurrent use.
type Store struct {
	db  store.Store
	now func() time.Time
	ttl time.Duration
	max int

	// mu guards byHash and byOperator (each operator's sessions, oldest
	// first).
	mu         sync.Mutex
	byHash     map[[sha256.Size]byte]*entry
	byOperator map[string][]*entry
}

// Open loads the sessions of db, dropping the expired ones.
func Open(db store.Store, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Clock == nil {
		o.Clock = clock.System()
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.MaxPerOperator <= 0 {
		o.MaxPerOperator = DefaultMaxPerOperator
	}
	s := &Store{db: db, now: o.Clock.Now, ttl: o.TTL, max: o.MaxPerOperator,
		byHash: map[[sha256.Size]byte]*entry{}, byOperator: map[string][]*entry{}}
	now := s.now()
	var stale [][]byte
	err := db.View(context.Background(), func(tx store.Tx) error {
		stale = stale[:0]
		clear(s.byHash)
		clear(s.byOperator)
		return tx.Scan(Bucket, nil, false, func(k, v []byte) error {
			var e entry
			if len(k) != sha256.Size || json.Unmarshal(v, &e.s) != nil || e.s.Operator == "" || !now.Before(e.s.Expires) {
				stale = append(stale, slices.Clone(k))
				return nil
			}
			copy(e.hash[:], k)
			e.ended = make(chan struct{})
			s.byHash[e.hash] = &e
			s.byOperator[e.s.Operator] = append(s.byOperator[e.s.Operator], &e)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load login sessions: %w", err)
	}
	for op, es := range s.byOperator {
		slices.SortFunc(es, func(a, b *entry) int { return a.s.Created.Compare(b.s.Created) })
		s.byOperator[op] = es
	}
	if len(stale) > 0 {
		if err := db.Update(context.Background(), func(tx store.Tx) error {
			for _, k := range stale {
				if err := tx.Delete(Bucket, k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("drop expired login sessions: %w", err)
		}
	}
	return s, nil
}

// TTL is how long a session lasts.
func (s *Store) TTL() time.Duration { return s.ttl }

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return b
}

// Create adds a session of operator in tx and returns its token, which
// exists nowhere else: the store keeps its hash. Beyond MaxPerOperator the
// operator's oldest sessions are deleted in the same transaction, and its
// expired ones too.
func (s *Store) Create(tx store.Tx, operator, remote string) (string, Session, error) {
	if operator == "" {
		return "", Session{}, fmt.Errorf("%w: no operator", ErrInvalid)
	}
	token := base64.RawURLEncoding.EncodeToString(random(32))
	now := s.now()
	e := &entry{s: Session{
		Handle: HandlePrefix + hex.EncodeToString(random(8)), Operator: operator,
		Created: now.UTC(), Expires: now.Add(s.ttl).UTC(), Remote: remote,
		CSRF: base64.RawURLEncoding.EncodeToString(random(24)),
	}, hash: sha256.Sum256([]byte(token)), ended: make(chan struct{})}
	b, err := json.Marshal(e.s)
	if err != nil {
		return "", Session{}, fmt.Errorf("encode login session: %w", err)
	}
	s.mu.Lock()
	current := slices.Clone(s.byOperator[operator])
	s.mu.Unlock()
	var drop []*entry
	live := 0
	for _, o := range current {
		if !now.Before(o.s.Expires) {
			drop = append(drop, o)
		} else {
			live++
		}
	}
	for _, o := range current { // oldest first
		if live < s.max {
			break
		}
		if now.Before(o.s.Expires) {
			drop = append(drop, o)
			live--
		}
	}
	for _, o := range drop {
		if err := tx.Delete(Bucket, o.hash[:]); err != nil {
			return "", Session{}, err
		}
	}
	if err := tx.Put(Bucket, e.hash[:], b); err != nil {
		return "", Session{}, err
	}
	tx.OnCommit(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, o := range drop {
			s.forget(o)
		}
		s.byHash[e.hash] = e
		s.byOperator[operator] = append(s.byOperator[operator], e)
	})
	return token, e.s, nil
}

// forget removes e from memory and ends it. s.mu is held.
func (s *Store) forget(e *entry) {
	if s.byHash[e.hash] != e {
		return // gone already
	}
	delete(s.byHash, e.hash)
	es := slices.DeleteFunc(s.byOperator[e.s.Operator], func(o *entry) bool { return o == e })
	if len(es) == 0 {
		delete(s.byOperator, e.s.Operator)
	} else {
		s.byOperator[e.s.Operator] = es
	}
	close(e.ended)
}

// Lookup returns the live session of token, and a channel closed when it
// ends (deleted; expiry closes nothing: the holder watches Expires). An
// expired session is not returned.
func (s *Store) Lookup(token string) (Session, <-chan struct{}, bool) {
	if token == "" || len(token) > 256 {
		return Session{}, nil, false
	}
	h := sha256.Sum256([]byte(token))
	s.mu.Lock()
	e := s.byHash[h]
	s.mu.Unlock()
	if e == nil || !s.now().Before(e.s.Expires) {
		return Session{}, nil, false
	}
	return e.s, e.ended, true
}

// Delete deletes the session of token in tx (logout); it reports whether
// there was one.
func (s *Store) Delete(tx store.Tx, token string) (bool, error) {
	h := sha256.Sum256([]byte(token))
	s.mu.Lock()
	e := s.byHash[h]
	s.mu.Unlock()
	if e == nil {
		return false, nil
	}
	if err := tx.Delete(Bucket, h[:]); err != nil {
		return false, err
	}
	tx.OnCommit(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.forget(e)
	})
	return true, nil
}

// DeleteOperator deletes in tx every session of operator except the one
// whose handle is keep (empty: none), and returns how many it deletes.
func (s *Store) DeleteOperator(tx store.Tx, operator, keep string) (int, error) {
	s.mu.Lock()
	es := slices.Clone(s.byOperator[operator])
	s.mu.Unlock()
	var drop []*entry
	for _, e := range es {
		if keep != "" && e.s.Handle == keep {
			continue
		}
		if err := tx.Delete(Bucket, e.hash[:]); err != nil {
			return 0, err
		}
		drop = append(drop, e)
	}
	if len(drop) > 0 {
		tx.OnCommit(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, e := range drop {
				s.forget(e)
			}
		})
	}
	return len(drop), nil
}

// Count returns the number of sessions of operator in memory (expired ones
// included until they are dropped).
func (s *Store) Count(operator string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byOperator[operator])
}
