package delivery

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"github.com/otamq/otamq/ota/store"
)

// Deferred timeline entries.
//
// Every offer and every cancel has a timeline entry, but the broker does
// not write it into the timeline bucket when it writes the offer: a
// rollout offers to thousands of devices in one transaction, and each
// device's newest timeline entries sit on a leaf page of their own, so
// writing the entries dirtied about one page per device (4,000 pages for
// 4,000 offers: docs/BENCHMARKS.md). The offer record instead carries the
// entries not yet written (its "pending" items, the entry of its own
// offer or cancel among them). They are written into the timeline when
// that device's timeline is written anyway (its next event), or when
// maxPendingEntries have piled up on a device that sends nothing. The
// offer record is written in the same transaction as before, so the
// entries are as durable as they were; readers of the timeline merge the
// pending items in, by the key they will have, so no reader can tell a
// pending entry from a written one.
//
// A pending item, as stored at the end of the offer record (flag bit 1),
// oldest first:
//
//	key sequence (uvarint, not 0) · time (Unix ns, varint) · flags (1:
//	bit0 cancel; bit1, bit2, bit3: the rollout ID, release, version are
//	the previous item's) · those of rollout ID, release, version that are
//	not (each a uvarint length and its bytes)
//
// The last item is the entry of the record's own offer or cancel; an offer
// and its cancel, and the rollouts of one release, share their strings.

// maxPendingEntries is how many entries an offer record may carry before
// they are written into the timeline: a device that sends nothing through
// four rollouts, each an offer and a cancel.
const maxPendingEntries = 8

// pendingItem is one entry an offer record carries.
type pendingItem struct {
	seq       uint64
	time      int64
	cancelled bool
	rollout   string
	release   string
	version   string
}

// itemOf is the item of of's own entry, under key sequence seq.
func itemOf(of *Offer, seq uint64) pendingItem {
	return pendingItem{seq: seq, time: of.Created.UnixNano(), cancelled: of.Cancelled,
		rollout: of.RolloutID, release: of.Release, version: of.Version}
}

// Flags of a pending item.
const (
	itemCancel      = 1 << 0
	itemSameRollout = 1 << 1
	itemSameRelease = 1 << 2
	itemSameVersion = 1 << 3
)

// appendItem appends it to items b, whose last item is prev (nil: b is
// empty).
func appendItem(b []byte, it, prev *pendingItem) []byte {
	b = binary.AppendUvarint(b, it.seq)
	b = binary.AppendVarint(b, it.time)
	var flags byte
	if it.cancelled {
		flags |= itemCancel
	}
	strs := [...]string{it.rollout, it.release, it.version}
	if prev != nil {
		for i, p := range [...]string{prev.rollout, prev.release, prev.version} {
			if strs[i] == p {
				flags |= itemSameRollout << i
			}
		}
	}
	b = append(b, flags)
	for i, s := range strs {
		if flags&(itemSameRollout<<i) == 0 {
			b = appendString(b, s)
		}
	}
	return b
}

// decodeItems parses the pending items at the end of an offer record.
func decodeItems(b []byte) ([]pendingItem, error) {
	var out []pendingItem
	_, err := scanItems(b, func(it pendingItem) { out = append(out, it) })
	return out, err
}

// scanItems parses the pending items in b and returns how many there are,
// passing each to fn unless it is nil (then nothing is allocated: an
// offer record's items are checked and counted on the offers' path).
func scanItems(b []byte, fn func(pendingItem)) (int, error) {
	n := 0
	r := &offerReader{b: b}
	var prev [3][]byte // the previous item's strings
	for len(r.b) > 0 && r.err == nil {
		if n == maxPendingEntries {
			r.fail("more pending entries than an offer carries")
			break
		}
		var it pendingItem
		it.seq = r.uvarint("pending entry", 1<<64-1)
		it.time = r.varint("pending entry time")
		fb := r.bytes("pending entry flags", 1)
		if r.err != nil {
			break
		}
		flags := fb[0]
		if it.seq == 0 || flags&^(itemCancel|itemSameRollout|itemSameRelease|itemSameVersion) != 0 || n == 0 && flags&^itemCancel != 0 {
			r.fail("pending entry")
			break
		}
		it.cancelled = flags&itemCancel != 0
		var cur [3][]byte
		for i, what := range [...]string{"pending entry rollout id", "pending entry release", "pending entry version"} {
			if flags&(itemSameRollout<<i) != 0 {
				cur[i] = prev[i]
			} else {
				cur[i] = r.bytes(what, int(r.uvarint(what, maxOfferString)))
			}
		}
		if r.err != nil {
			break
		}
		prev = cur
		n++
		if fn != nil {
			it.rollout, it.release, it.version = string(cur[0]), string(cur[1]), string(cur[2])
			fn(it)
		}
	}
	if r.err != nil {
		return 0, r.err
	}
	return n, nil
}

// entry is the timeline entry it stands for.
func (it *pendingItem) entry() Entry {
	e := Entry{Time: time.Unix(0, it.time).UTC(), Source: "broker", Type: "offer", RolloutID: it.rollout, Version: it.version}
	if it.cancelled {
		e.Type = "cancel"
	} else {
		e.Detail = "release " + it.release
	}
	return e
}

// key is the timeline key the item's entry has, written or not.
func (it *pendingItem) key(id string) []byte {
	return timelineKey(id, time.Unix(0, it.time), it.seq)
}

// storedOffer reads device id's offer record in tx: nil when there is
// none. A record that does not parse is an error.
func storedOffer(tx store.Tx, id string) (*Offer, error) {
	v := tx.Get(bucketOffers, []byte(id))
	if v == nil {
		return nil, nil
	}
	of, err := decodeOffer(v, nil)
	if err != nil {
		return nil, fmt.Errorf("offer of %s: %w", id, err)
	}
	return of, nil
}

// writeOffer stores of, whose own entry is pending, in tx: the entries old
// (the record it replaces, nil if none) carries stay pending with it, or,
// when that would be more than maxPendingEntries, are written into the
// timeline first. Push the offer after the transaction commits.
func (s *Service) writeOffer(tx store.Tx, h *holds, old, of *Offer) error {
	var items []byte
	n := 0
	if old != nil && old.npending > 0 {
		if old.npending < maxPendingEntries {
			items, n = old.pending, old.npending // old is not used again
		} else if err := s.flushItems(tx, of.Device, old.pending); err != nil {
			return err
		}
	}
	it := itemOf(of, s.timeSeq.Add(1))
	var prev *pendingItem
	if n > 0 {
		last := itemOf(old, 0) // the last item is the entry of old itself
		prev = &last
	}
	of.pending, of.npending = appendItem(items, &it, prev), n+1
	return h.put(tx, of)
}

// pendingEntries returns the entries device id's offer record carries, as
// they are to be written, and writes the record back without them. A
// record that does not parse carries none that can be read: it is left as
// it is (the next offer replaces it), so that it does not stop the device's
// events from being recorded.
func (s *Service) pendingEntries(tx store.Tx, id string) ([]keyedEntry, error) {
	v := tx.Get(bucketOffers, []byte(id))
	if !hasPending(v) {
		return nil, nil
	}
	of, err := decodeOffer(v, nil)
	if err != nil {
		s.o.Logger.Warn("offer record does not parse; the timeline entries it carries are lost", "device", id, "err", err)
		return nil, nil
	}
	es, err := itemEntries(id, of.pending)
	if err != nil {
		return nil, err // decodeOffer checked the items
	}
	of.pending, of.npending = nil, 0
	// the offer itself is unchanged: the copy in memory stays
	return es, tx.Put(bucketOffers, []byte(id), encodeOffer(of))
}

// flushItems writes the entries of pending items b into id's timeline.
func (s *Service) flushItems(tx store.Tx, id string, b []byte) error {
	es, err := itemEntries(id, b)
	if err != nil {
		return err
	}
	return s.putEntries(tx, id, es)
}

// keyedEntry is a timeline entry to write, under its key.
type keyedEntry struct {
	key []byte
	e   Entry
}

func itemEntries(id string, b []byte) ([]keyedEntry, error) {
	items, err := decodeItems(b)
	if err != nil {
		return nil, fmt.Errorf("offer of %s: %w", id, err)
	}
	out := make([]keyedEntry, len(items), len(items)+1)
	for i := range items {
		out[i] = keyedEntry{key: items[i].key(id), e: items[i].entry()}
	}
	return out, nil
}

// timelineRec is a timeline entry as a reader meets it: its key suffix
// (time and sequence, the cursor) and its record, or the pending item it
// will be written from.
type timelineRec struct {
	key  []byte // after the device's prefix
	v    []byte // nil for a pending entry
	item *pendingItem
}

func (r *timelineRec) decode() (Entry, error) {
	if r.item != nil {
		return r.item.entry(), nil
	}
	return decodeEntry(r.v)
}

// newestEntries returns up to max of device id's newest timeline entries,
// newest first: those written and those its offer record carries, merged
// by key. An offer record that does not parse adds none.
func (s *Service) newestEntries(tx store.Tx, id string, max int) ([]timelineRec, error) {
	prefix := append([]byte(id), 0)
	var pend []timelineRec
	if v := tx.Get(bucketOffers, []byte(id)); hasPending(v) {
		of, err := decodeOffer(v, nil)
		var items []pendingItem
		if err == nil {
			items, err = decodeItems(of.pending)
		}
		if err != nil {
			s.o.Logger.Warn("offer record does not parse; the timeline is read without the entries it carries", "device", id, "err", err)
		}
		for i := range items {
			pend = append(pend, timelineRec{key: items[i].key(id)[len(prefix):], item: &items[i]})
		}
	}
	newest := append(bytes.Clone(prefix), bytes.Repeat([]byte{0xff}, 16)...)
	out := make([]timelineRec, 0, min(max, 16))
	err := tx.Scan(bucketTimeline, newest, true, func(k, v []byte) error {
		if !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+16 || len(out) == max {
			return store.ErrStop
		}
		out = append(out, timelineRec{key: bytes.Clone(k[len(prefix):]), v: bytes.Clone(v)})
		return nil
	})
	if err != nil || len(pend) == 0 {
		return out, err
	}
	out = append(out, pend...)
	sort.SliceStable(out, func(i, j int) bool { return bytes.Compare(out[i].key, out[j].key) > 0 })
	return out[:min(len(out), max)], nil
}
