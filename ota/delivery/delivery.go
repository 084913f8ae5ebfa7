package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Masterminds/semver/v3"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/store"
	"github.com/otamq/otamq/ota/wire"
)

// Store buckets owned by delivery.
const (
	bucketOffers      = "offers"
	bucketTimeline    = "timeline"
	bucketTimelineLen = "timeline_len" // entries per device's timeline
)

// Defaults of Options.
const (
	DefaultMaxBlockSize   = 32 * 1024
	DefaultMaxWindow      = 16
	DefaultDeviceRate     = 512 * 1024 // bytes per second
	DefaultTimelineLength = 100
	// recentRollouts is how many past rollout IDs of a device are kept, so
	// that late events (a rollback after a cancel) are still accepted.
	recentRollouts = 8
)

// Errors.
var (
	ErrNotFound   = errors.New("not found")
	ErrInvalid    = errors.New("invalid")
	ErrRefused    = errors.New("refused")
	ErrUnknownRun = errors.New("event for a rollout the device was never offered")
	// ErrNoReceiver: no client that may receive a device's messages (the
	// device or its gateway) is subscribed.
	ErrNoReceiver = errors.New("no authorized subscriber")
	// ErrTooLarge: a receiver's Maximum Packet Size is below the message.
	ErrTooLarge = errors.New("larger than a receiver accepts")
)

// Sender delivers messages to devices. The hooks implement it. Its methods
// must not block and must not call back into the Service.
type Sender interface {
	// SendOffer publishes an offer on device id's manifest topic. It
	// must not change payload: one is shared by several devices.
	SendOffer(id string, payload []byte)
	// SendCommand publishes a command on device id's command topic. It
	// returns ErrNoReceiver when neither the device nor its gateway is
	// subscribed, ErrTooLarge when a receiver could not take it.
	SendCommand(id string, payload []byte) error
}

// Recorder counts what delivery does. Labels come from fixed sets.
type Recorder interface {
	BlockRequest(result string)
	BlockBytes(n int)
	DownloadSeconds(s float64)
	Event(code string)
	EventDropped(reason string)
}

// GatewayRecorder is what a Recorder may also implement to count the
// blocks gateways fetch on their own topics for their children (the
// "fetch once per gateway" path, docs/PROTOCOL.md, "Gateways").
type GatewayRecorder interface {
	// GatewayBlockBytes counts n image bytes sent to a gateway for the
	// children the image is offered to (children >= 1): without the
	// gateway's cache each of them would have fetched these bytes.
	GatewayBlockBytes(n, children int)
}

type nopRecorder struct{}

func (nopRecorder) BlockRequest(string)     {}
func (nopRecorder) BlockBytes(int)          {}
func (nopRecorder) DownloadSeconds(float64) {}
func (nopRecorder) Event(string)            {}
func (nopRecorder) EventDropped(string)     {}

// Options configure New. The zero value means all defaults.
type Options struct {
	// Clock is the time. Default clock.System().
	Clock  clock.Clock
	Logger *slog.Logger
	// Sender reaches devices. Default: messages go nowhere.
	Sender Sender
	// Recorder counts. Default: nothing is counted.
	Recorder Recorder
	// Feed gets each device update event inside the transaction that
	// records it (event.Update), and after it. Default: none.
	Feed *event.Feed
	// MaxBlockSize caps the block size a device may ask for. Default
	// DefaultMaxBlockSize.
	MaxBlockSize int
	// MaxWindow caps the blocks of one request. Default DefaultMaxWindow;
	// at most 256.
	MaxWindow int
	// DeviceRate is the bytes per second one device may download, with a
	// burst of one full window. Default DefaultDeviceRate; negative: no
	// limit.
	DeviceRate float64
	// GlobalRate is the bytes per second all downloads together may take,
	// with a burst of one second's worth. Default 0: no limit.
	GlobalRate float64
	// TimelineLength is how many events each device's timeline keeps.
	// Default DefaultTimelineLength.
	TimelineLength int
	// EventFault, when set, runs inside the transaction that records a
	// device event; an error from it fails that transaction as a store
	// failure would. Only tests set it (a failpoint); default none.
	EventFault func() error
}

// Offer is a release assigned to a device.
type Offer struct {
	Device      string           `json:"device"`
	RolloutID   string           `json:"rollout_id"`
	Release     string           `json:"release"`
	Version     string           `json:"version"`
	Digest      manifest.Digest  `json:"digest"`
	InstallMode wire.InstallMode `json:"install_mode"`
	BlockSize   uint32           `json:"block_size"`
	Deadline    uint64           `json:"deadline,omitempty"`
	Created     time.Time        `json:"created"`
	By          string           `json:"by,omitempty"`
	// Recent are the rollout IDs this device was offered before, newest
	// first.
	Recent []string `json:"recent,omitempty"`
	// Cancelled marks a record kept only for Recent.
	Cancelled bool `json:"cancelled,omitempty"`
	// pending are the timeline entries the stored record carries, not yet
	// written into the timeline (deferred.go): npending items as stored.
	pending  []byte
	npending int
}

// Service is the delivery of releases to devices. Its methods are safe for
// concurrent use.
type Service struct {
	db    store.Store
	cat   *release.Catalog
	fleet *fleet.Registry
	o     Options

	mu      sync.RWMutex // guards offers and commons
	offers  map[string]held
	commons map[commonKey]*offerCommon

	// Block serving runs on every downloading device's read goroutine, so
	// its state is per device: devMu guards only the map, each devState
	// has its own lock, and the global bucket has one of its own.
	devMu  sync.RWMutex
	devs   map[string]*devState
	gmu    sync.Mutex // guards global
	global bucket

	timeSeq atomic.Uint64 // tie-breaker for timeline keys
}

// devState is what block serving remembers of a downloading device.
type devState struct {
	mu      sync.Mutex // guards the fields below
	bucket  bucket
	digest  manifest.Digest
	started time.Time // first block of digest served
}

// dev returns id's block-serving state, creating it on first use.
func (s *Service) dev(id string, now time.Time) *devState {
	s.devMu.RLock()
	st := s.devs[id]
	s.devMu.RUnlock()
	if st != nil {
		return st
	}
	s.devMu.Lock()
	defer s.devMu.Unlock()
	if st = s.devs[id]; st == nil {
		burst := float64(s.o.MaxBlockSize * s.o.MaxWindow)
		st = &devState{bucket: bucket{rate: s.o.DeviceRate, burst: burst, tokens: burst, last: now}}
		s.devs[id] = st
	}
	return st
}

// New loads the offers from db.
func New(db store.Store, cat *release.Catalog, reg *fleet.Registry, opts *Options) (*Service, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Clock == nil {
		o.Clock = clock.System()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Sender == nil {
		o.Sender = nopSender{}
	}
	if o.Recorder == nil {
		o.Recorder = nopRecorder{}
	}
	if o.MaxBlockSize <= 0 {
		o.MaxBlockSize = DefaultMaxBlockSize
	}
	if o.MaxWindow <= 0 {
		o.MaxWindow = DefaultMaxWindow
	}
	o.MaxWindow = min(o.MaxWindow, maxWindowLimit)
	if o.DeviceRate == 0 {
		o.DeviceRate = DefaultDeviceRate
	}
	if o.TimelineLength <= 0 {
		o.TimelineLength = DefaultTimelineLength
	}
	s := &Service{db: db, cat: cat, fleet: reg, o: o, offers: map[string]held{}, commons: map[commonKey]*offerCommon{}, devs: map[string]*devState{}}
	if o.GlobalRate > 0 {
		s.global = bucket{rate: o.GlobalRate, burst: o.GlobalRate, tokens: o.GlobalRate, last: o.Clock.Now()}
	}
	// A rollout's offers share their rollout, release and version;
	// decoded, each would have copies of its own until hold finds their
	// common part.
	seen := map[string]string{}
	intern := func(b []byte) string {
		if c, ok := seen[string(b)]; ok {
			return c
		}
		c := string(b)
		seen[c] = c
		return c
	}
	err := db.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan(bucketOffers, nil, false, func(k, v []byte) error {
			of, err := decodeOffer(v, intern)
			if err != nil {
				return fmt.Errorf("offer of %q: %w", k, err)
			}
			s.hold(of)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load offers: %w", err)
	}
	return s, nil
}

type nopSender struct{}

func (nopSender) SendOffer(string, []byte)         {}
func (nopSender) SendCommand(string, []byte) error { return ErrNoReceiver }

// Current returns device id's offer, if it has one.
func (s *Service) Current(id string) (Offer, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.offers[id]
	if !ok || h.cancelled {
		return Offer{}, false
	}
	return h.offer(id), true
}

// Offers returns the current offers, by device.
func (s *Service) Offers() []Offer {
	s.mu.RLock()
	out := make([]Offer, 0, len(s.offers))
	for id, h := range s.offers {
		if !h.cancelled {
			out = append(out, h.offer(id))
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// ManifestSubscribed is told that device id (or its gateway) subscribed
// to id's manifest topic: the device gets its current offer at once, so it
// never needs retained messages.
func (s *Service) ManifestSubscribed(id string) {
	if _, has := s.Current(id); has {
		s.o.Sender.SendOffer(id, s.OfferMessage(id))
	}
}

// OfferMessage returns the encoded offer device id should have: its current
// offer, or the empty offer (nothing to do).
func (s *Service) OfferMessage(id string) []byte { return s.offerMessage(id, nil) }

// offerMemo keeps the last offer message encoded: the devices of one
// rollout pass share their message, so a push encodes it once.
type offerMemo struct {
	release, rollout string
	mode             wire.InstallMode
	block            uint32
	deadline         uint64
	msg              []byte
}

func (s *Service) offerMessage(id string, memo *offerMemo) []byte {
	of, ok := s.Current(id)
	if !ok {
		return wire.Offer{}.Encode()
	}
	if memo != nil && memo.msg != nil && memo.release == of.Release && memo.rollout == of.RolloutID &&
		memo.mode == of.InstallMode && memo.block == of.BlockSize && memo.deadline == of.Deadline {
		return memo.msg
	}
	r, ok := s.cat.Release(of.Release)
	if !ok {
		return wire.Offer{}.Encode()
	}
	msg := wire.Offer{RolloutID: of.RolloutID, Manifest: r.Manifest, InstallMode: of.InstallMode,
		BlockSize: of.BlockSize, Deadline: of.Deadline, MaxWindow: uint32(s.o.MaxWindow)}.Encode()
	if memo != nil {
		*memo = offerMemo{release: of.Release, rollout: of.RolloutID, mode: of.InstallMode, block: of.BlockSize, deadline: of.Deadline, msg: msg}
	}
	return msg
}

// OfferSpec is what to offer.
type OfferSpec struct {
	Release     string
	RolloutID   string // default: a generated "manual-…" ID
	InstallMode wire.InstallMode
	BlockSize   uint32 // suggested; default the service's maximum
	Deadline    uint64
}

// OfferResult is the outcome for one device.
type OfferResult struct {
	Device string `json:"device"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	// Warning, on an offer made, says why the device is known to refuse
	// the manifest (from what its last birth reported); the offer stands.
	Warning string `json:"warning,omitempty"`
}

// NewRolloutID returns a fresh ID for an offer made by hand.
func NewRolloutID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "manual-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// Offer assigns spec's release to each device in ids, in tx. A device that
// cannot take the release (unknown, not a device, revoked, other hardware)
// is skipped with its reason; the others are offered. Push the offers after
// the transaction commits.
func (s *Service) Offer(tx store.Tx, ids []string, spec OfferSpec, actor string) ([]OfferResult, error) {
	r, ok := s.cat.Release(spec.Release)
	if !ok {
		return nil, fmt.Errorf("release %q: %w", spec.Release, ErrNotFound)
	}
	if err := s.cat.Offerable(r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if spec.InstallMode > wire.InstallOnCommand {
		return nil, fmt.Errorf("%w: install mode %d", ErrInvalid, spec.InstallMode)
	}
	if len(spec.RolloutID) > wire.MaxRolloutIDLen || spec.RolloutID == "" {
		return nil, fmt.Errorf("%w: rollout ID must be 1 to %d bytes", ErrInvalid, wire.MaxRolloutIDLen)
	}
	if spec.BlockSize == 0 || int(spec.BlockSize) > s.o.MaxBlockSize {
		spec.BlockSize = uint32(s.o.MaxBlockSize)
	}
	now := s.o.Clock.Now().UTC()
	results := make([]OfferResult, 0, len(ids))
	want, _ := semver.StrictNewVersion(r.Version)
	var have runningVersion
	h := &holds{s: s}
	for _, id := range ids {
		res := OfferResult{Device: id}
		d, run, ok := s.fleet.Running(id)
		if err := eligible(id, d, &run, ok, r); err != nil {
			res.Error = err.Error()
			results = append(results, res)
			continue
		}
		old, err := storedOffer(tx, id)
		if err != nil {
			// what cannot be read is replaced, as before offer records
			// carried timeline entries
			s.o.Logger.Warn("offer record does not parse; replaced by the new offer", "device", id, "err", err)
			old = nil
		}
		of := &Offer{Device: id, RolloutID: spec.RolloutID, Release: r.ID, Version: r.Version, Digest: r.Digest,
			InstallMode: spec.InstallMode, BlockSize: spec.BlockSize, Deadline: spec.Deadline, Created: now, By: actor}
		of.Recent = recent(old, spec.RolloutID)
		if err := s.writeOffer(tx, h, old, of); err != nil {
			return nil, err
		}
		res.OK = true
		if res.Warning = refusal(&run, r, want, &have); res.Warning != "" {
			s.o.Logger.Warn("offer the device will refuse", "device", id, "release", r.ID,
				"rollout", spec.RolloutID, "reason", res.Warning)
		}
		results = append(results, res)
	}
	return results, nil
}

// refusal says why a device running st will refuse the manifest of r (of
// version want, nil if it is not strict semver), as far as its last birth
// tells (the policy of the C agent, docs/PROTOCOL.md): a sequence number
// below its replay guard, a secure version below its own, a version not
// newer than the one it runs (unless it allows downgrades). "" when
// nothing is known against it. Configurations and feature flags have their
// own versions and guards, which a birth does not carry.
func refusal(st *fleet.Running, r release.Release, want *semver.Version, have *runningVersion) string {
	if r.Kind != manifest.KindFirmware || !st.Born {
		return ""
	}
	switch {
	case r.Sequence < st.ReplayGuard:
		return fmt.Sprintf("manifest sequence %d is below the device's replay guard %d (the sequence of the manifest it runs): it refuses the manifest", r.Sequence, st.ReplayGuard)
	case r.SecureVersion < st.SecureVersion:
		return fmt.Sprintf("secure version %d is below the device's %d: it refuses the manifest", r.SecureVersion, st.SecureVersion)
	}
	if want == nil {
		return ""
	}
	if v := have.parse(st.Firmware); v != nil && !want.GreaterThan(v) {
		return fmt.Sprintf("version %s is not newer than the %s it runs: it refuses the manifest unless it allows downgrades", r.Version, st.Firmware)
	}
	return ""
}

// runningVersion is the last firmware version refusal parsed: the
// devices of one offer call mostly run the same.
type runningVersion struct {
	parsed bool
	s      string
	v      *semver.Version // nil: s is not strict semver
}

// parse returns s as a strict semantic version, or nil.
func (rv *runningVersion) parse(s string) *semver.Version {
	if !rv.parsed || rv.s != s {
		rv.parsed, rv.s = true, s
		rv.v, _ = semver.StrictNewVersion(s)
	}
	return rv.v
}

// eligible checks that device id (registration d and what it runs,
// registered when ok) may be offered r.
func eligible(id string, d *fleet.Device, run *fleet.Running, ok bool, r release.Release) error {
	switch {
	case !ok:
		return fmt.Errorf("%s is not registered", id)
	case !d.Role.IsDevice():
		return fmt.Errorf("%s is an %s, not a device", id, d.Role)
	case d.Revoked:
		return fmt.Errorf("%s is revoked", id)
	}
	hw := d.Hardware
	if hw == "" {
		hw = run.Hardware
	}
	if hw == "" {
		return fmt.Errorf("%s has no known hardware (register it with --hardware, or let it send a birth)", id)
	}
	if !slices.Contains(r.Hardware, hw) {
		return fmt.Errorf("release %s targets %v, not %s's hardware %s", r.ID, r.Hardware, id, hw)
	}
	return nil
}

// recent returns the rollout IDs a device whose offer record is old (nil:
// none) was offered, newest first, starting with rolloutID.
func recent(old *Offer, rolloutID string) []string {
	if old == nil {
		return []string{rolloutID}
	}
	out := make([]string, 1, min(recentRollouts, 2+len(old.Recent)))
	out[0] = rolloutID
	add := func(r string) {
		if r != "" && !slices.Contains(out, r) && len(out) < recentRollouts {
			out = append(out, r)
		}
	}
	add(old.RolloutID)
	for _, r := range old.Recent {
		add(r)
	}
	return out
}

// holds gathers the offers one call writes, to be held in memory when its
// transaction commits: one callback and one lock for all of them.
type holds struct {
	s      *Service
	offers []*Offer
}

// put stores of in tx, to be held when tx commits.
func (h *holds) put(tx store.Tx, of *Offer) error {
	if err := tx.Put(bucketOffers, []byte(of.Device), encodeOffer(of)); err != nil {
		return err
	}
	if len(h.offers) == 0 {
		// at the first offer's place among the callbacks: the call
		// registers none of its own between its offers
		tx.OnCommit(h.commit)
	}
	h.offers = append(h.offers, of)
	return nil
}

func (h *holds) commit() {
	h.s.mu.Lock()
	var c *offerCommon
	for _, of := range h.offers {
		c = h.s.holdLike(of, c)
	}
	h.s.mu.Unlock()
}

// Cancel withdraws the offers of ids (a device without one is fine). Push
// the empty offers after the transaction commits.
func (s *Service) Cancel(tx store.Tx, ids []string, actor string) ([]OfferResult, error) {
	now := s.o.Clock.Now().UTC()
	var out []OfferResult
	h := &holds{s: s}
	for _, id := range ids {
		ok, err := s.cancel(tx, h, id, "", actor, now)
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, OfferResult{Device: id, Error: "no offer"})
			continue
		}
		out = append(out, OfferResult{Device: id, OK: true})
	}
	return out, nil
}

// cancel withdraws device id's offer, if it has one (made under rolloutID
// unless that is ""), and reports whether it did.
func (s *Service) cancel(tx store.Tx, h *holds, id, rolloutID, actor string, now time.Time) (bool, error) {
	old, err := storedOffer(tx, id)
	if err != nil || old == nil {
		return false, err
	}
	if old.Cancelled || rolloutID != "" && old.RolloutID != rolloutID {
		return false, nil
	}
	of := *old
	of.Cancelled, of.By, of.Created = true, actor, now
	if err := s.writeOffer(tx, h, old, &of); err != nil {
		return false, err
	}
	return true, nil
}

// Withdraw cancels device id's offer if it is still the one made under
// rolloutID, and reports whether it did. Push the empty offer after the
// transaction commits.
func (s *Service) Withdraw(tx store.Tx, id, rolloutID, actor string) (bool, error) {
	if rolloutID == "" {
		return false, nil
	}
	return s.cancel(tx, &holds{s: s}, id, rolloutID, actor, s.o.Clock.Now().UTC())
}

// Push sends each device in ids its current offer (or the empty one).
// The Sender must not change the message: devices of one rollout share
// theirs.
func (s *Service) Push(ids []string) {
	var memo offerMemo
	for _, id := range ids {
		s.o.Sender.SendOffer(id, s.offerMessage(id, &memo))
	}
}

// Command sends a command to each device in ids and reports which had a
// subscriber to take it. Commands are not stored: a device that is not
// connected does not get it.
func (s *Service) Command(ids []string, c wire.Command) []OfferResult {
	payload := c.Encode()
	out := make([]OfferResult, 0, len(ids))
	for _, id := range ids {
		if _, ok := s.fleet.Lookup(id); !ok {
			out = append(out, OfferResult{Device: id, Error: "not registered"})
			continue
		}
		switch err := s.o.Sender.SendCommand(id, payload); {
		case err == nil:
			out = append(out, OfferResult{Device: id, OK: true})
		case errors.Is(err, ErrNoReceiver):
			out = append(out, OfferResult{Device: id, Error: "not delivered: neither the device nor its gateway is subscribed (commands are not queued)"})
		default:
			out = append(out, OfferResult{Device: id, Error: "not delivered: " + err.Error()})
		}
	}
	return out
}

// bucket is a token bucket of bytes.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

// take removes n tokens if there are enough and returns 0; otherwise it
// returns how long until there would be.
func (b *bucket) take(n float64, now time.Time) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if n > b.burst {
		n = b.burst // a request larger than the burst waits for a full bucket
	}
	if b.tokens >= n {
		b.tokens -= n
		return 0
	}
	return time.Duration((n - b.tokens) / b.rate * float64(time.Second))
}

// Block results, the label of otamq_block_requests_total.
const (
	ResultServed      = "served"
	ResultNotAssigned = "not_assigned"
	ResultUnknown     = "unknown_image"
	ResultOutOfRange  = "out_of_range"
	ResultBadRequest  = "bad_request"
	ResultRateLimited = "rate_limited"
	ResultInternal    = "internal"
)

// BlockResults lists every block result, so counters can start at 0.
var BlockResults = []string{ResultServed, ResultNotAssigned, ResultUnknown, ResultOutOfRange, ResultBadRequest, ResultRateLimited, ResultInternal}

// Serve answers a block request of device id: it calls emit with each
// message to publish on the device's block topic, in order. A message is
// only valid during its emit call (the buffer is reused: publish copies
// it). maxData caps each block's data (what the requesting client can
// receive): 0 means no cap beyond the service's, a negative value that no
// data fits. It is Begin and Next for the whole window.
func (s *Service) Serve(ctx context.Context, id string, req wire.BlockRequest, maxData int, emit func(msg []byte)) {
	if w := s.Begin(id, req, maxData, emit); w != nil {
		s.Next(ctx, w, w.left, emit)
	}
}

// Window is a block request being answered: the blocks still to send.
// It is not safe for concurrent use.
type Window struct {
	requestID uint32
	digest    manifest.Digest
	imageSize uint64
	next      uint64 // offset of the next block
	size      int    // block size
	left      int    // blocks still to send
	// children: the window goes to a gateway on its own topics, for this
	// many of its children the image is offered to (0: to the device the
	// image is offered to).
	children int
}

// Left returns how many blocks of w are still to send.
func (w *Window) Left() int { return w.left }

func blockError(req wire.BlockRequest, code wire.BlockErr, retry time.Duration, msg string) []byte {
	e := wire.BlockError{RequestID: req.RequestID, Offset: req.Offset, Code: code, Message: msg}
	if retry > 0 {
		e.RetryAfterMS = uint32(min(retry.Milliseconds()+1, math.MaxUint32))
	}
	return e.Encode()
}

// Busy answers a block request the caller cannot take now with "rate
// limited" and retry.
func (s *Service) Busy(req wire.BlockRequest, retry time.Duration, emit func(msg []byte)) {
	s.o.Recorder.BlockRequest(ResultRateLimited)
	emit(blockError(req, wire.BlockRateLimited, retry, "busy"))
}

// BadRequest answers a block request that could not be decoded.
func (s *Service) BadRequest(msg string, emit func(msg []byte)) {
	s.o.Recorder.BlockRequest(ResultBadRequest)
	if len(msg) > wire.MaxMessageLen {
		msg = msg[:wire.MaxMessageLen]
	}
	emit(blockError(wire.BlockRequest{}, wire.BlockBadRequest, 0, msg))
}

// msgBufs recycles block message buffers.
var msgBufs sync.Pool

// Begin checks a block request of device id (the image offered to it,
// the offset, the sizes against the service's limits and maxData, as for
// Serve) and takes its bytes from the rate limits. A refused request is
// answered through emit and Begin returns nil; an accepted one returns the
// window whose blocks Next sends. Either way it is counted.
func (s *Service) Begin(id string, req wire.BlockRequest, maxData int, emit func([]byte)) *Window {
	w, result := s.begin(id, req, maxData, emit)
	s.o.Recorder.BlockRequest(result)
	return w
}

func (s *Service) begin(id string, req wire.BlockRequest, maxData int, emit func([]byte)) (*Window, string) {
	var d manifest.Digest
	copy(d[:], req.Digest)
	of, offered := s.Current(id)
	children := 0
	if !offered || of.Digest != d {
		// A gateway may fetch, on its own topics, an image offered to one
		// of its children: it caches it and serves them all.
		if children = s.childrenOffered(id, d); children == 0 {
			if _, known := s.cat.ByDigest(d); !known {
				emit(blockError(req, wire.BlockUnknownImage, 0, "unknown image"))
				return nil, ResultUnknown
			}
			emit(blockError(req, wire.BlockNotAssigned, 0, "image not offered to "+id+" or a child of it"))
			return nil, ResultNotAssigned
		}
	}
	r, ok := s.cat.ByDigest(d)
	if !ok {
		emit(blockError(req, wire.BlockUnknownImage, 0, "unknown image"))
		return nil, ResultUnknown
	}
	if err := s.cat.Offerable(r); err != nil {
		emit(blockError(req, wire.BlockNotAssigned, 0, "release signing key revoked"))
		return nil, ResultNotAssigned
	}
	if req.Offset >= r.Size {
		emit(blockError(req, wire.BlockOutOfRange, 0, fmt.Sprintf("image is %d bytes", r.Size)))
		return nil, ResultOutOfRange
	}
	size := min(int(min(req.Size, math.MaxInt32)), s.o.MaxBlockSize)
	if maxData != 0 {
		size = min(size, maxData)
	}
	if size <= 0 {
		emit(blockError(req, wire.BlockBadRequest, 0, "no block size fits the client's maximum packet size"))
		return nil, ResultBadRequest
	}
	count := min(int(min(req.Count, math.MaxInt32)), s.o.MaxWindow)
	left := r.Size - req.Offset
	count = min(count, int((left+uint64(size)-1)/uint64(size)))
	total := float64(min(uint64(count)*uint64(size), left))

	now := s.o.Clock.Now()
	st := s.dev(id, now)
	st.mu.Lock()
	wait := st.bucket.take(total, now)
	if wait == 0 {
		s.gmu.Lock()
		gw := s.global.take(total, now)
		s.gmu.Unlock()
		if gw > 0 {
			st.bucket.tokens += total // give the device's tokens back
			wait = gw
		}
	}
	if wait == 0 && (st.digest != d || st.started.IsZero()) {
		// The first block served of this image starts the download clock.
		st.digest, st.started = d, now
	}
	st.mu.Unlock()
	if wait > 0 {
		emit(blockError(req, wire.BlockRateLimited, wait, "rate limited"))
		return nil, ResultRateLimited
	}

	return &Window{requestID: req.RequestID, digest: d, imageSize: r.Size, next: req.Offset, size: size, left: count,
		children: children}, ResultServed
}

// childrenOffered counts the registered, unrevoked children of gateway gw
// whose current offer is the image of digest d (0 when gw is no gateway).
// It walks gw's children: a gateway's block request costs a map lookup per
// child, once per window.
func (s *Service) childrenOffered(gw string, d manifest.Digest) int {
	if g, ok := s.fleet.Lookup(gw); !ok || g.Role != fleet.RoleGateway || g.Revoked {
		return 0
	}
	kids := s.fleet.Children(gw)
	n := 0
	s.mu.RLock()
	for _, k := range kids {
		if h, ok := s.offers[k]; ok && !h.cancelled && h.c.key.digest == d {
			n++
		}
	}
	s.mu.RUnlock()
	return n
}

// MaxReadBytes bounds the block data Next reads in one read transaction.
const MaxReadBytes = 32 * 1024

// maxWindowLimit is the largest window Options.MaxWindow may set.
const maxWindowLimit = 256

// Next emits up to n more blocks of w (fewer at the end of the window, and
// no more than fit MaxReadBytes, but at least one). The blocks are read in
// one read transaction and emitted after it has ended, so emit may block
// (on a client's socket) without holding the store: a read transaction
// left open keeps the store from growing its file, which stalls every
// write. If the image cannot be read it emits an "internal" block error,
// counts it, ends the window and returns false.
func (s *Service) Next(ctx context.Context, w *Window, n int, emit func(msg []byte)) bool {
	n = min(n, w.left, max(1, MaxReadBytes/w.size)) // w.left <= maxWindowLimit
	if n <= 0 {
		return true
	}
	buf, _ := msgBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	defer msgBufs.Put(buf)
	var ends, sizes [maxWindowLimit]int32 // each message's end in *buf, and its data size
	msgs := (*buf)[:0]
	next, count := w.next, 0
	err := s.cat.ReadBlocks(ctx, w.digest, w.next, w.size, n, func(off uint64, data []byte) error {
		msgs = wire.AppendBlock(msgs, w.requestID, off, w.imageSize, data)
		ends[count], sizes[count] = int32(len(msgs)), int32(len(data))
		count++
		next = off + uint64(len(data))
		return nil
	})
	*buf = msgs
	if err != nil {
		s.o.Logger.Error("image read failed", "digest", w.digest.String(), "offset", w.next, "err", err)
		emit(blockError(wire.BlockRequest{RequestID: w.requestID, Offset: w.next}, wire.BlockInternal, 0, "internal error"))
		s.o.Recorder.BlockRequest(ResultInternal)
		w.left = 0
		return false
	}
	start := int32(0)
	gr, _ := s.o.Recorder.(GatewayRecorder)
	for i := range count {
		msg := msgs[start:ends[i]]
		emit(msg)
		s.o.Recorder.BlockBytes(int(sizes[i]))
		if w.children > 0 && gr != nil {
			gr.GatewayBlockBytes(int(sizes[i]), w.children)
		}
		start = ends[i]
	}
	w.next, w.left = next, w.left-count
	return true
}

// Entry is one line of a device's update timeline.
type Entry struct {
	Time time.Time `json:"time"`
	// Source is "device" (an event it sent) or "broker" (an offer, a
	// cancel).
	Source    string `json:"source"`
	Type      string `json:"type"`
	RolloutID string `json:"rollout_id,omitempty"`
	Version   string `json:"version,omitempty"`
	Progress  uint8  `json:"progress,omitempty"`
	Error     string `json:"error,omitempty"`
	Detail    string `json:"detail,omitempty"`
	// DeviceTime is the device's clock (Unix seconds), 0 if unknown.
	DeviceTime uint64 `json:"device_time,omitempty"`
}

func timelineKey(id string, t time.Time, seq uint64) []byte {
	k := append([]byte(id), 0)
	k = binary.BigEndian.AppendUint64(k, uint64(t.UnixNano()))
	return binary.BigEndian.AppendUint64(k, seq)
}

// appendTimeline adds e to id's timeline, after the entries its offer
// record carries (deferred.go).
func (s *Service) appendTimeline(tx store.Tx, id string, e Entry) error {
	es, err := s.pendingEntries(tx, id)
	if err != nil {
		return err
	}
	return s.putEntries(tx, id, append(es, keyedEntry{key: timelineKey(id, e.Time, s.timeSeq.Add(1)), e: e}))
}

// putEntries writes es into id's timeline; a timeline that holds more
// than TimelineLength and its slack is trimmed back to its newest
// TimelineLength entries.
//
// The device's entry count is kept in bucketTimelineLen, so that an append
// reads one small record instead of counting the entries: with full
// timelines, as in any broker that has run a while, counting walked 100
// keys for every event. A device without a count (a store from before it)
// is counted once.
func (s *Service) putEntries(tx store.Tx, id string, es []keyedEntry) error {
	prefix := append([]byte(id), 0)
	n, err := timelineLen(tx, id, prefix)
	if err != nil {
		return err
	}
	for i := range es {
		if err := tx.Put(bucketTimeline, es[i].key, encodeEntry(&es[i].e)); err != nil {
			return err
		}
	}
	n += uint64(len(es))
	if keep := uint64(s.o.TimelineLength); n > keep+timelineSlack(keep) {
		over := n - keep
		// the oldest entries beyond the length; only their keys are
		// copied
		old := make([][]byte, 0, over)
		if err := tx.Scan(bucketTimeline, prefix, false, func(k, _ []byte) error {
			if !bytes.HasPrefix(k, prefix) || uint64(len(old)) == over {
				return store.ErrStop
			}
			old = append(old, bytes.Clone(k))
			return nil
		}); err != nil {
			return err
		}
		for _, k := range old {
			if err := tx.Delete(bucketTimeline, k); err != nil {
				return err
			}
		}
		n -= uint64(len(old))
	}
	return tx.Put(bucketTimelineLen, []byte(id), binary.AppendUvarint(nil, n))
}

// timelineSlack is how many entries beyond its length a timeline may hold
// before it is trimmed back to its length: deleting a quarter at once
// costs less than one deletion per append. Readers see the newest
// TimelineLength entries only.
func timelineSlack(keep uint64) uint64 { return max(1, keep/4) }

// timelineLen returns how many entries id's timeline holds: its count, or
// (none stored, or one that does not parse) the entries counted.
func timelineLen(tx store.Tx, id string, prefix []byte) (uint64, error) {
	if v := tx.Get(bucketTimelineLen, []byte(id)); v != nil {
		if n, k := binary.Uvarint(v); k == len(v) {
			return n, nil
		}
	}
	var n uint64
	err := tx.Scan(bucketTimeline, prefix, false, func(k, _ []byte) error {
		if !bytes.HasPrefix(k, prefix) {
			return store.ErrStop
		}
		n++
		return nil
	})
	return n, err
}

// Timeline returns up to limit of id's newest timeline entries, newest
// first.
func (s *Service) Timeline(id string, limit int) ([]Entry, error) {
	es, _, _, err := s.TimelinePage(id, "", limit)
	return es, err
}

// Event records an event device id sent. It is durable when Event
// returns. An event naming a rollout the device was never offered is
// refused (ErrUnknownRun) and counted.
func (s *Service) Event(ctx context.Context, id string, ev wire.Event) error {
	if ev.RolloutID != "" && !s.knownRollout(id, ev.RolloutID) {
		s.o.Recorder.EventDropped("unknown_rollout")
		return fmt.Errorf("%w: %s sent %s for rollout %q", ErrUnknownRun, id, ev.Code, ev.RolloutID)
	}
	now := s.o.Clock.Now().UTC()
	e := Entry{Time: now, Source: "device", Type: ev.Code.String(), RolloutID: ev.RolloutID, Version: ev.TargetVersion,
		Progress: ev.Progress, Detail: ev.Detail, DeviceTime: ev.DeviceTime}
	if ev.Error != 0 {
		e.Error = ev.Error.String()
	}
	if err := s.db.Update(ctx, func(tx store.Tx) error {
		if s.o.EventFault != nil {
			if err := s.o.EventFault(); err != nil {
				return err
			}
		}
		if err := s.appendTimeline(tx, id, e); err != nil {
			return err
		}
		return s.o.Feed.PublishTx(tx, event.Update{Base: event.Base{ID: id, At: now}, Event: ev})
	}); err != nil {
		return fmt.Errorf("timeline of %s: %w", id, err)
	}
	s.o.Recorder.Event(ev.Code.String())
	if ev.Code == wire.EvDownloadCompleted {
		var started time.Time
		s.devMu.RLock()
		st := s.devs[id]
		s.devMu.RUnlock()
		if st != nil {
			st.mu.Lock()
			started, st.started = st.started, time.Time{}
			st.mu.Unlock()
		}
		if !started.IsZero() {
			s.o.Recorder.DownloadSeconds(s.o.Clock.Now().Sub(started).Seconds())
		}
	}
	return nil
}

func (s *Service) knownRollout(id, rollout string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, ok := s.offers[id]
	return ok && (h.c.key.rollout == rollout || slices.Contains(h.c.recent, rollout))
}
