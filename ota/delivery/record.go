package delivery

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/otamq/otamq/ota/wire"
)

// An offer is stored as a binary record (offerVersion): a rollout offers
// to thousands of devices in one pass, and the record is written for each
// and read back for its Recent list, so its encoding is on the path of
// every offer. Records written before it are JSON and still read.
//
//	version (1) · flags (1: bit0 cancelled, bit1 pending entries) ·
//	install mode (1) · block size (uvarint) · deadline (uvarint) · created
//	(Unix ns, varint) · digest (32) · device, rollout ID, release, version,
//	by (each a uvarint length and its bytes) · recent (uvarint count, then
//	each string) · with bit1: the pending timeline entries, 1 to
//	maxPendingEntries items to the end (deferred.go)
//
// Bit1 is newer than the format: a broker from before it refuses such a
// record.
const offerVersion = 1

// Flags of an offer record.
const (
	offerCancelled = 1 << 0
	offerPending   = 1 << 1
)

// hasPending reports whether stored offer record v carries pending
// timeline entries, without parsing it.
func hasPending(v []byte) bool {
	return len(v) >= 2 && v[0] == offerVersion && v[1]&offerPending != 0
}

// Bounds of a stored offer's fields, checked when it is read back (the
// writers stay far below them).
const (
	maxOfferString = 256
	maxOfferRecent = 64
)

var errOffer = errors.New("bad offer record")

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// encodeOffer returns of's stored record.
func encodeOffer(of *Offer) []byte {
	n := 2 + 1 + 3*binary.MaxVarintLen64 + len(of.Digest) + 6*binary.MaxVarintLen16 +
		len(of.Device) + len(of.RolloutID) + len(of.Release) + len(of.Version) + len(of.By) + len(of.pending)
	for _, r := range of.Recent {
		n += binary.MaxVarintLen16 + len(r)
	}
	b := make([]byte, 0, n)
	var flags byte
	if of.Cancelled {
		flags |= offerCancelled
	}
	if len(of.pending) > 0 {
		flags |= offerPending
	}
	b = append(b, offerVersion, flags, byte(of.InstallMode))
	b = binary.AppendUvarint(b, uint64(of.BlockSize))
	b = binary.AppendUvarint(b, of.Deadline)
	b = binary.AppendVarint(b, of.Created.UnixNano())
	b = append(b, of.Digest[:]...)
	for _, s := range [...]string{of.Device, of.RolloutID, of.Release, of.Version, of.By} {
		b = appendString(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(of.Recent)))
	for _, r := range of.Recent {
		b = appendString(b, r)
	}
	return append(b, of.pending...)
}

// offerReader reads the fields of a binary record (an offer, a timeline
// entry) in order; the first problem sticks, wrapping base (errOffer when
// nil).
type offerReader struct {
	b    []byte
	base error
	err  error
}

func (r *offerReader) fail(what string) {
	if r.err == nil {
		base := r.base
		if base == nil {
			base = errOffer
		}
		r.err = fmt.Errorf("%w: %s", base, what)
	}
}

func (r *offerReader) uvarint(what string, max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *offerReader) varint(what string) int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *offerReader) bytes(what string, n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail(what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// str reads a length-prefixed string through intern (nil: a plain copy).
func (r *offerReader) str(what string, intern func([]byte) string) string {
	return r.strIn(what, maxOfferString, intern)
}

// strIn reads a length-prefixed string of at most max bytes through intern
// (nil: a plain copy).
func (r *offerReader) strIn(what string, max uint64, intern func([]byte) string) string {
	v := r.bytes(what, int(r.uvarint(what, max)))
	if r.err != nil {
		return ""
	}
	if intern != nil {
		return intern(v)
	}
	return string(v)
}

// decodeOffer parses a stored offer, binary or (written before the binary
// record) JSON. Strings go through intern when it is not nil, so the
// offers of one rollout share theirs.
func decodeOffer(v []byte, intern func([]byte) string) (*Offer, error) {
	if len(v) > 0 && v[0] == '{' {
		var of Offer
		if err := json.Unmarshal(v, &of); err != nil {
			return nil, fmt.Errorf("%w: %v", errOffer, err)
		}
		if intern != nil {
			of.RolloutID, of.Release, of.Version, of.By = intern([]byte(of.RolloutID)), intern([]byte(of.Release)), intern([]byte(of.Version)), intern([]byte(of.By))
			for i := range of.Recent {
				of.Recent[i] = intern([]byte(of.Recent[i]))
			}
		}
		return &of, nil
	}
	if len(v) < 3 || v[0] != offerVersion {
		return nil, fmt.Errorf("%w: unknown format (%d bytes)", errOffer, len(v))
	}
	of := &Offer{Cancelled: v[1]&offerCancelled != 0, InstallMode: wire.InstallMode(v[2])}
	if v[1]&^(offerCancelled|offerPending) != 0 || of.InstallMode > wire.InstallOnCommand {
		return nil, fmt.Errorf("%w: flags %#x, install mode %d", errOffer, v[1], v[2])
	}
	r := &offerReader{b: v[3:]}
	of.BlockSize = uint32(r.uvarint("block size", 1<<32-1))
	of.Deadline = r.uvarint("deadline", 1<<64-1)
	created := r.varint("created")
	copy(of.Digest[:], r.bytes("digest", len(of.Digest)))
	of.Device = r.str("device", nil)
	of.RolloutID = r.str("rollout id", intern)
	of.Release = r.str("release", intern)
	of.Version = r.str("version", intern)
	of.By = r.str("by", intern)
	if n := r.uvarint("recent", maxOfferRecent); n > 0 {
		of.Recent = make([]string, n)
		for i := range of.Recent {
			of.Recent[i] = r.str("recent", intern)
		}
	}
	if r.err == nil && v[1]&offerPending != 0 {
		n, err := scanItems(r.b, nil)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			r.fail("no pending entries")
		}
		of.pending, of.npending = bytes.Clone(r.b), n
		r.b = nil
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Sprintf("%d bytes after the record", len(r.b)))
	}
	if r.err != nil {
		return nil, r.err
	}
	of.Created = time.Unix(0, created).UTC()
	return of, nil
}

// A timeline entry is a binary record too (entryVersion): one is written
// for every offer, every cancel and every event a device sends. Entries
// written before it are JSON and still read.
//
//	version (1) · progress (1) · time (Unix ns, varint) · device time
//	(uvarint) · source, type, rollout ID, version, error, detail (each a
//	uvarint length and its bytes)
const entryVersion = 1

// maxEntryString bounds each string of a stored entry when it is read back
// (a device's detail is at most wire.MaxDetailLen; the broker's strings
// are IDs and names).
const maxEntryString = 1024

var errEntry = errors.New("bad timeline entry")

// encodeEntry returns e's stored record.
func encodeEntry(e *Entry) []byte {
	strs := [...]string{e.Source, e.Type, e.RolloutID, e.Version, e.Error, e.Detail}
	n := 2 + 2*binary.MaxVarintLen64
	for _, s := range strs {
		n += binary.MaxVarintLen16 + len(s)
	}
	b := make([]byte, 0, n)
	b = append(b, entryVersion, e.Progress)
	b = binary.AppendVarint(b, e.Time.UnixNano())
	b = binary.AppendUvarint(b, e.DeviceTime)
	for _, s := range strs {
		b = appendString(b, s)
	}
	return b
}

// decodeEntry parses a stored timeline entry, binary or (written before
// the binary record) JSON.
func decodeEntry(v []byte) (Entry, error) {
	var e Entry
	if len(v) > 0 && v[0] == '{' {
		if err := json.Unmarshal(v, &e); err != nil {
			return Entry{}, fmt.Errorf("%w: %v", errEntry, err)
		}
		return e, nil
	}
	if len(v) < 2 || v[0] != entryVersion {
		return Entry{}, fmt.Errorf("%w: unknown format (%d bytes)", errEntry, len(v))
	}
	e.Progress = v[1]
	r := &offerReader{b: v[2:], base: errEntry}
	t := r.varint("time")
	e.DeviceTime = r.uvarint("device time", 1<<64-1)
	for _, f := range [...]struct {
		what string
		s    *string
	}{{"source", &e.Source}, {"type", &e.Type}, {"rollout id", &e.RolloutID}, {"version", &e.Version}, {"error", &e.Error}, {"detail", &e.Detail}} {
		*f.s = r.strIn(f.what, maxEntryString, nil)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Sprintf("%d bytes after the record", len(r.b)))
	}
	if r.err != nil {
		return Entry{}, r.err
	}
	e.Time = time.Unix(0, t).UTC()
	return e, nil
}
