package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/store"
)

// Store buckets owned by the fleet.
const (
	bucketClients = "clients"
	bucketStatus  = "status"
)

// DefaultFlushInterval is how often changed statuses are written.
const DefaultFlushInterval = 2 * time.Second

// Options configure Open. The zero value means all defaults.
type Options struct {
	// Clock is the time. Default clock.System(), which Run reads every
	// 50 ms (a device's last-seen time needs no finer resolution, and the
	// clock read was a measurable part of every heartbeat's cost), or at
	// every call when Run is not running. Run's flush ticks on Clock.
	Clock clock.Clock
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Feed gets the registry's events: registrations, updates and
	// revocations inside their transaction, connects, disconnects, births,
	// Last Wills, health and OTA-state changes right after they happened.
	// Default: none.
	Feed *event.Feed
	// FlushInterval is the period of Run's status flush. Default
	// DefaultFlushInterval.
	FlushInterval time.Duration
	// PasswordChecks bounds how many operator password hashes are verified
	// at once (each takes about 19 MiB for a few tens of milliseconds).
	// Default 2.
	PasswordChecks int
	// ChildTimeout is how long a gateway's child may go unheard, its
	// gateway online, before it no longer counts as online. Default
	// DefaultChildTimeout.
	ChildTimeout time.Duration
}

// Registry holds every registered client. Its methods are safe for
// concurrent use.
type Registry struct {
	db     store.Store
	clock  clock.Clock
	system bool         // clock is the system clock: now reads the coarse one
	coarse atomic.Int64 // Unix nanoseconds, kept by Run; 0 when Run is not running
	log    *slog.Logger
	feed   *event.Feed
	flush  time.Duration
	// childTimeout is Options.ChildTimeout in nanoseconds.
	childTimeout int64
	// throttle admits operator password checks; checkTime is their moving
	// average duration in nanoseconds.
	throttle  *throttle
	checkTime atomic.Int64

	// byID indexes the entries. It is sharded because every message of
	// every device looks its sender up (twice: ACL and status), and one
	// RWMutex's reader count is a cache line all cores fight over.
	byID index
	// kids lists each gateway's registered children.
	kids kidIndex

	dirtyMu sync.Mutex // guards dirty
	dirty   []*entry

	gen atomic.Uint64 // connection generations

	intern *interner // shared strings: versions, hardware, regions
}

// entry is one registered client in memory.
type entry struct {
	rec atomic.Pointer[record] // replaced whole when a transaction commits

	mu     sync.Mutex // guards status, conn, dirty and reached
	status status
	conn   uint64 // generation of the current connection, 0 if none
	dirty  bool   // status changed since the last flush
	// reached, on a gateway's entry, holds the children it has relayed for
	// in its current session (nil for every other client).
	reached map[*entry]struct{}
}

// Open loads the registry from db.
func Open(db store.Store, opts *Options) (*Registry, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.System()
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.PasswordChecks <= 0 {
		o.PasswordChecks = 2
	}
	if o.ChildTimeout <= 0 {
		o.ChildTimeout = DefaultChildTimeout
	}
	r := &Registry{
		db: db, clock: o.Clock, system: clock.IsSystem(o.Clock), log: o.Logger, feed: o.Feed, flush: o.FlushInterval,
		throttle: newThrottle(o.PasswordChecks), childTimeout: int64(o.ChildTimeout),
		intern: &interner{},
	}
	err := db.View(context.Background(), func(tx store.Tx) error {
		if err := tx.Scan(bucketClients, nil, false, func(k, v []byte) error {
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("client %q: %w", k, err)
			}
			r.internRecord(&rec)
			e := &entry{}
			e.rec.Store(&rec)
			r.byID.store(rec.ID, e)
			r.kids.move(rec.ID, "", indexedParent(&rec))
			return nil
		}); err != nil {
			return err
		}
		return tx.Scan(bucketStatus, nil, false, func(k, v []byte) error {
			e := r.byID.load(string(k))
			if e == nil {
				return nil // status of a client whose record is gone
			}
			var st Status
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("status %q: %w", k, err)
			}
			e.status = importStatus(st, r.intern)
			if e.status.online || e.status.unreachable {
				// Nobody is connected to a broker that just started.
				e.status.online, e.status.unreachable, e.status.viaGen = false, false, 0
				e.status.reason = reasonCode(ReasonRestart)
				r.markDirty(e)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load fleet: %w", err)
	}
	return r, nil
}

func (r *Registry) lookup(id string) *entry {
	return r.byID.load(id)
}

// Lookup returns the registration of id. The Device is shared: never modify
// it.
func (r *Registry) Lookup(id string) (*Device, bool) {
	e := r.lookup(id)
	if e == nil {
		return nil, false
	}
	return &e.rec.Load().Device, true
}

// Running is what a device's last birth said of the firmware it runs:
// what an offer is judged by. Born is false before its first birth (the
// rest is then empty).
type Running struct {
	Born          bool
	Firmware      string
	Hardware      string // as the device reports it
	ReplayGuard   uint64
	SecureVersion uint32
}

// Running returns the registration of id (shared: never modify it) and
// what it runs: Get's Device and the birth's part of its Status, without
// the copy of the whole status.
func (r *Registry) Running(id string) (*Device, Running, bool) {
	e := r.lookup(id)
	if e == nil {
		return nil, Running{}, false
	}
	e.mu.Lock()
	s := &e.status
	run := Running{Born: s.born}
	if s.born {
		run.Firmware, run.Hardware, run.ReplayGuard, run.SecureVersion = s.firmware, s.reportedHardware, s.replayGuard, s.secureVersion
	}
	e.mu.Unlock()
	return &e.rec.Load().Device, run, true
}

// Get returns the registration and status of id.
func (r *Registry) Get(id string) (View, bool) {
	e := r.lookup(id)
	if e == nil {
		return View{}, false
	}
	return r.view(e), true
}

// view returns e's registration and status. A child not heard from for
// the child timeout is shown offline (ReasonChildSilent), its gateway
// still named.
func (r *Registry) view(e *entry) View {
	e.mu.Lock()
	st := e.status.export()
	e.mu.Unlock()
	if st.Online && st.Gateway != "" && r.now().Sub(st.LastSeen) > time.Duration(r.childTimeout) {
		st.Online, st.DisconnectReason = false, ReasonChildSilent
	}
	return View{Device: e.rec.Load().Device, Status: st}
}

// Each calls f with every registered client, in no order. It collects the
// entries first, so f may call the registry; the views are snapshots.
func (r *Registry) Each(f func(v *View)) {
	entries := make([]*entry, 0, r.byID.len())
	r.byID.each(func(_ string, e *entry) { entries = append(entries, e) })
	for _, e := range entries {
		v := r.view(e)
		f(&v)
	}
}

// Len returns the number of registered clients.
func (r *Registry) Len() int {
	return r.byID.len()
}

// Filter selects clients for List. Empty fields match everything.
type Filter struct {
	Roles        []Role
	Hardware     string
	Region       string
	Connectivity string
	Group        string
	Tag          string // "key" or "key=value"
	Parent       string
	Firmware     string
	Online       *bool
	Revoked      *bool
	// After is the paging cursor: only IDs greater than it.
	After string
	// Limit is the page size (1..MaxListLimit; 0 means DefaultListLimit).
	Limit int
}

// List page sizes.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

func (f *Filter) match(v *View) bool {
	d := &v.Device
	switch {
	case len(f.Roles) > 0 && !slices.Contains(f.Roles, d.Role),
		f.Hardware != "" && d.Hardware != f.Hardware,
		f.Region != "" && d.Region != f.Region,
		f.Connectivity != "" && d.Connectivity != f.Connectivity,
		f.Group != "" && !d.InGroup(f.Group),
		f.Parent != "" && d.Parent != f.Parent,
		f.Firmware != "" && v.Status.Firmware != f.Firmware,
		f.Online != nil && v.Status.Online != *f.Online,
		f.Revoked != nil && d.Revoked != *f.Revoked:
		return false
	}
	if f.Tag != "" {
		k, val, hasVal := strings.Cut(f.Tag, "=")
		got, ok := d.Tags[k]
		if !ok || hasVal && got != val {
			return false
		}
	}
	return true
}

// List returns the clients matching f in ID order, at most f.Limit of them,
// and the cursor of the next page ("" when this is the last).
func (r *Registry) List(f Filter) ([]View, string) {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	limit = min(limit, MaxListLimit)
	ids := make([]string, 0, r.byID.len())
	r.byID.each(func(id string, _ *entry) {
		if id > f.After {
			ids = append(ids, id)
		}
	})
	slices.Sort(ids)
	var out []View
	for _, id := range ids {
		e := r.lookup(id)
		if e == nil {
			continue
		}
		v := r.view(e)
		if !f.match(&v) {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID
		}
		out = append(out, v)
	}
	return out, ""
}

// Credentials are what a client presented at connect.
type Credentials struct {
	ClientID string
	Username string
	Password []byte
	// CertCN is the common name of a verified client certificate, when
	// HasCert is set.
	CertCN  string
	HasCert bool
	// Remote is the client's address ("ip:port" or "ip"), the scope of
	// login throttling by address.
	Remote string
}

// checkPassword verifies an operator password through the login throttle.
func (r *Registry) checkPassword(c Credentials, secret string) error {
	a, err := r.throttle.begin(c.ClientID, addressKey(c.Remote), r.now)
	if err != nil {
		return err
	}
	start := time.Now()
	ok := verifySecret(secret, c.Password)
	r.notePasswordCheck(time.Since(start))
	a.done(ok, r.now())
	if !ok {
		return ErrBadCredentials
	}
	return nil
}

// notePasswordCheck folds one password check's duration into the moving
// average PasswordCheckTime reports (weight 1/4 for the newest).
func (r *Registry) notePasswordCheck(d time.Duration) {
	for {
		old := r.checkTime.Load()
		avg := d.Nanoseconds()
		if old != 0 {
			avg = old + (avg-old)/4
		}
		if r.checkTime.CompareAndSwap(old, avg) {
			return
		}
	}
}

// PasswordCheckTime returns the moving average of how long an operator
// password check takes now (0 before the first). A refusal that needs no
// check can be held this long, so that it looks like one that did, however
// loaded the machine is.
func (r *Registry) PasswordCheckTime() time.Duration { return time.Duration(r.checkTime.Load()) }

// addressKey is the throttling scope of a remote address: the IP, or for
// IPv6 its /64 (one subscriber's network).
func addressKey(remote string) string {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return prefixKey(ap.Addr())
	}
	if a, err := netip.ParseAddr(remote); err == nil {
		return prefixKey(a)
	}
	return remote
}

func prefixKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// Authenticate checks c against the registration of c.ClientID and returns
// it. Errors: ErrNotFound, ErrIdentityMismatch, ErrBadCredentials,
// ErrRevoked, ErrThrottled. Operator passwords take tens of milliseconds to
// verify, at most Options.PasswordChecks run at once, and failures back off
// per client ID and source address (see LoginFreeFailuresID).
func (r *Registry) Authenticate(c Credentials) (*Device, error) {
	e := r.lookup(c.ClientID)
	if e == nil {
		return nil, ErrNotFound
	}
	rec := e.rec.Load()
	if c.Username != "" && c.Username != c.ClientID {
		return nil, fmt.Errorf("%w: username %q is not the client id", ErrIdentityMismatch, c.Username)
	}
	if c.HasCert {
		if c.CertCN != c.ClientID {
			return nil, fmt.Errorf("%w: certificate common name %q is not the client id", ErrIdentityMismatch, c.CertCN)
		}
	} else {
		if rec.Auth == AuthCert {
			return nil, fmt.Errorf("%w: %s must present a client certificate", ErrBadCredentials, c.ClientID)
		}
		if c.Username == "" {
			return nil, fmt.Errorf("%w: no username", ErrBadCredentials)
		}
		if rec.Auth == AuthPassword {
			if err := r.checkPassword(c, rec.Secret); err != nil {
				return nil, err
			}
		} else if !verifySecret(rec.Secret, c.Password) {
			return nil, ErrBadCredentials
		}
	}
	if rec.Revoked {
		return nil, ErrRevoked
	}
	return &rec.Device, nil
}

// internRecord makes rec share the strings that many records repeat.
func (r *Registry) internRecord(rec *record) {
	switch rec.Role {
	case RoleDevice, RoleGateway, RoleOperator, RoleObserver:
		rec.Role = Role(r.intern.get(string(rec.Role)))
	}
	rec.Auth = AuthMethod(r.intern.get(string(rec.Auth)))
	rec.Secret = compactSecret(rec.Secret)
	rec.Hardware, rec.Region = r.intern.get(rec.Hardware), r.intern.get(rec.Region)
	rec.Connectivity = r.intern.get(rec.Connectivity)
	for i, g := range rec.Groups {
		rec.Groups[i] = r.intern.get(g)
	}
}

// Counts are fleet aggregates for metrics.
type Counts struct {
	// Registered counts devices and gateways that are not revoked, by
	// declared hardware.
	Registered map[string]int
	// ByVersion counts devices and gateways by reported firmware and
	// hardware ("" if never reported).
	ByVersion map[[2]string]int
	// Online counts devices and gateways connected themselves (children
	// reached through their gateway are in Children).
	Online int
	// Heartbeats counts the heartbeats accepted since the registry was
	// opened (a counter kept per entry, so that no cache line is shared by
	// every heartbeat).
	Heartbeats uint64
	// GatewaysOnline counts connected gateways (unrevoked).
	GatewaysOnline int
	// Children counts the unrevoked children of gateways by presence:
	// "reachable" (online through their gateway), "unreachable" (their
	// gateway's session ended), "offline" (not heard from through an
	// online gateway, or never).
	Children map[string]int
	// ChildrenPerGateway holds, for each unrevoked gateway, how many
	// unrevoked children are registered under it (in no order).
	ChildrenPerGateway []int
}

// Child presences, the keys of Counts.Children.
const (
	ChildReachable   = "reachable"
	ChildUnreachable = "unreachable"
	ChildOffline     = "offline"
)

// Counts computes the fleet aggregates. It walks every entry: call it at
// scrape time, not per message.
func (r *Registry) Counts() Counts {
	c := Counts{Registered: map[string]int{}, ByVersion: map[[2]string]int{},
		Children: map[string]int{ChildReachable: 0, ChildUnreachable: 0, ChildOffline: 0}}
	entries := make([]*entry, 0, r.byID.len())
	r.byID.each(func(_ string, e *entry) { entries = append(entries, e) })
	perGW := r.kids.perGateway()
	now := r.now().UnixNano()
	for _, e := range entries {
		rec := e.rec.Load()
		e.mu.Lock()
		fw, online, hb := e.status.firmware, e.status.online, e.status.heartbeatsRun
		unreachable, via, seen := e.status.unreachable, e.status.via, e.status.lastSeen
		e.mu.Unlock()
		c.Heartbeats += hb
		if !rec.Role.IsDevice() || rec.Revoked {
			continue
		}
		if online && via != "" && now-seen > r.childTimeout {
			online = false // a silent child (see view)
		}
		switch {
		case rec.Role == RoleGateway:
			c.ChildrenPerGateway = append(c.ChildrenPerGateway, perGW[rec.ID])
			if online {
				c.GatewaysOnline++
			}
		case rec.Parent == "":
		case online && via != "":
			c.Children[ChildReachable]++
		case unreachable:
			c.Children[ChildUnreachable]++
		default:
			c.Children[ChildOffline]++
		}
		c.Registered[rec.Hardware]++
		hw := rec.Hardware
		c.ByVersion[[2]string{fw, hw}]++
		if online && via == "" {
			c.Online++ // a connection of its own, not a gateway's relay
		}
	}
	return c
}

// coarseTick is how often Run reads the system clock for the coarse clock.
const coarseTick = 50 * time.Millisecond

// now is the registry's clock.
func (r *Registry) now() time.Time {
	if !r.system {
		return r.clock.Now()
	}
	if n := r.coarse.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Now()
}

// Run flushes changed statuses every FlushInterval until ctx ends, then
// flushes once more and returns. While it runs it also keeps the coarse
// clock.
func (r *Registry) Run(ctx context.Context) {
	t := r.clock.NewTicker(r.flush)
	defer t.Stop()
	var coarse <-chan time.Time
	if r.system {
		tick := time.NewTicker(coarseTick)
		defer tick.Stop()
		coarse = tick.C
		r.coarse.Store(time.Now().UnixNano())
		defer r.coarse.Store(0)
	}
	for {
		select {
		case now := <-coarse:
			r.coarse.Store(now.UnixNano())
		case <-ctx.Done():
			if err := r.Flush(context.Background()); err != nil {
				r.log.Error("final status flush failed", "err", err)
			}
			return
		case <-t.C():
			if err := r.Flush(ctx); err != nil {
				r.log.Error("status flush failed", "err", err)
			}
		}
	}
}
