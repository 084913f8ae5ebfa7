// Package audit keeps the log of every operator request: who asked what,
// when, from where, and with what result. Records are appended inside the
// same store transaction as the change they describe, so the log and the
// state never disagree; refused requests are logged in a transaction of
// their own.
//
// Every field of a record is bounded (Bound): a value longer than its
// field's limit is cut at a whole UTF-8 character and ends with a marker
// that gives the full length and the SHA-256 of the whole value, so a record
// never grows with its input and never loses the fact that something was
// cut. The log keeps at most Retention.MaxRecords records, none older than
// Retention.MaxAge; each Append removes at most a few records past those
// limits, so retention costs the writer a bounded amount of work.
//
// Three indexes (actor, action, target) let List answer a filtered query by
// reading only matching records: one filter walks its index, several are
// intersected by leapfrogging between their indexes.
package audit

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/ota/store"
)

// Store buckets owned by the audit log.
const (
	bucket       = "audit"
	bucketActor  = "audit.actor"
	bucketAction = "audit.action"
	bucketTarget = "audit.target"
	bucketMeta   = "audit.meta"
)

// indexVersion is written to the meta bucket once every record is indexed.
const indexVersion = 1

var indexKey = []byte("index")

// ResultOK is the result of a successful request.
const ResultOK = "ok"

// Record is one audit entry.
type Record struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Role   string    `json:"role,omitempty"`
	Remote string    `json:"remote,omitempty"`
	// Session is the MQTT client ID of the connection the request came on,
	// when it is not the actor's own ID (an operator session ID~SUFFIX).
	Session string `json:"session,omitempty"`
	// Action is "resource/verb", e.g. "device/register".
	Action string `json:"action"`
	Target string `json:"target,omitempty"`
	// Args is the request without its secrets: a JSON object, or, when the
	// request was larger than MaxArgsLen, a JSON string holding its
	// beginning and the truncation marker.
	Args json.RawMessage `json:"args,omitempty"`
	// Result is ResultOK or the error code.
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// Truncated names the fields that were cut to their bound (see
	// Bound), in field order.
	Truncated []string `json:"truncated,omitempty"`
}

// Defaults of Retention.
const (
	DefaultMaxRecords = 1_000_000
	DefaultMaxAge     = 90 * 24 * time.Hour
)

// pruneBatch is the most records one Append removes.
const pruneBatch = 16

// Retention bounds the log. The zero value means the defaults.
type Retention struct {
	// MaxRecords is how many records the log keeps. Default
	// DefaultMaxRecords; negative: no limit.
	MaxRecords int
	// MaxAge is how long a record is kept, measured against the time of
	// the newest record. Default DefaultMaxAge; negative: no limit.
	MaxAge time.Duration
}

func (r Retention) withDefaults() Retention {
	if r.MaxRecords == 0 {
		r.MaxRecords = DefaultMaxRecords
	}
	if r.MaxAge == 0 {
		r.MaxAge = DefaultMaxAge
	}
	return r
}

// Log appends records under a retention policy. Its methods are safe for
// concurrent use (they run in the caller's transaction).
type Log struct {
	ret Retention
}

// Open returns the log of db. It indexes the records of a log written by a
// version without indexes, in transactions of bounded size; the broker
// calls it before it serves anything.
func Open(ctx context.Context, db store.Store, ret Retention) (*Log, error) {
	l := &Log{ret: ret.withDefaults()}
	var indexed bool
	if err := db.View(context.Background(), func(tx store.Tx) error {
		v := tx.Get(bucketMeta, indexKey)
		indexed = len(v) == 8 && binary.BigEndian.Uint64(v) >= indexVersion
		return nil
	}); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if indexed {
		return l, nil
	}
	const batch = 10_000
	var from []byte
	for {
		var next []byte
		err := db.Update(ctx, func(tx store.Tx) error {
			next = nil
			n := 0
			return tx.Scan(bucket, from, false, func(k, v []byte) error {
				if n == batch {
					next = append([]byte(nil), k...)
					return store.ErrStop
				}
				n++
				r, err := decode(v)
				if err != nil {
					return err
				}
				return putIndex(tx, &r)
			})
		})
		if err != nil {
			return nil, fmt.Errorf("audit: index the log: %w", err)
		}
		if next == nil {
			break
		}
		from = next
	}
	err := db.Update(ctx, func(tx store.Tx) error {
		return tx.Put(bucketMeta, indexKey, binary.BigEndian.AppendUint64(nil, indexVersion))
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return l, nil
}

func key(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// Append adds rec to the log in tx, assigning its sequence number. It
// bounds every field (recording which were cut), indexes the record and
// removes up to a few records that are past the retention limits.
func (l *Log) Append(tx store.Tx, rec Record) error {
	seq, err := tx.NextSequence(bucket)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	rec.Seq = seq
	bound(&rec)
	v, err := json.Marshal(&rec)
	if err != nil {
		return fmt.Errorf("audit: encode: %w", err)
	}
	if err := tx.Put(bucket, key(seq), v); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := putIndex(tx, &rec); err != nil {
		return err
	}
	return l.prune(tx, seq, rec.Time)
}

// prune removes the oldest records while the log holds more than
// MaxRecords or its oldest record is older than MaxAge before now, at most
// pruneBatch of them: since every Append removes up to that many and adds
// one, a log over its limits shrinks back to them.
func (l *Log) prune(tx store.Tx, newest uint64, now time.Time) error {
	for range pruneBatch {
		k, v := first(tx)
		if k == nil {
			return nil
		}
		seq := binary.BigEndian.Uint64(k)
		if seq >= newest {
			return nil
		}
		over := l.ret.MaxRecords > 0 && newest-seq+1 > uint64(l.ret.MaxRecords)
		r, err := decode(v)
		if err != nil {
			return err
		}
		old := l.ret.MaxAge > 0 && r.Time.Before(now.Add(-l.ret.MaxAge))
		if !over && !old {
			return nil
		}
		if err := deleteRecord(tx, &r); err != nil {
			return err
		}
	}
	return nil
}

// first returns the oldest record's key and value (nil if the log is
// empty). The sequence numbers have no gaps except at the old end, so the
// count of records is newest - first + 1.
func first(tx store.Tx) (k, v []byte) {
	_ = tx.Scan(bucket, nil, false, func(kk, vv []byte) error {
		k, v = kk, vv
		return store.ErrStop
	})
	return k, v
}

func deleteRecord(tx store.Tx, r *Record) error {
	for _, ix := range indexesOf(r) {
		if err := tx.Delete(ix.bucket, indexEntry(ix.value, r.Seq)); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
	}
	if err := tx.Delete(bucket, key(r.Seq)); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// recordsRead counts decoded records (tests check that an indexed query
// reads only what it returns).
var recordsRead atomic.Uint64

func decode(v []byte) (Record, error) {
	recordsRead.Add(1)
	var r Record
	if err := json.Unmarshal(v, &r); err != nil {
		return Record{}, fmt.Errorf("audit: decode: %w", err)
	}
	return r, nil
}

// Query selects records for List. Empty fields match everything; a value
// longer than its field's bound matches the records that stored it
// bounded.
type Query struct {
	Actor  string
	Action string
	Target string
	// Before is the paging cursor: only records with a lower sequence
	// number (0: from the newest).
	Before uint64
	// Limit is the page size (default DefaultLimit, at most MaxLimit).
	Limit int
}

// Page sizes of List.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// List returns matching records, newest first, and the cursor of the next
// page (0 when there is none). With filters it reads the indexes, and only
// the records that match.
func List(db store.Store, q Query) ([]Record, uint64, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	limit = min(limit, MaxLimit)
	if q.Before == 1 {
		return nil, 0, nil
	}
	bound := q.Before - 1 // wraps to the largest sequence when Before is 0
	ixs := queryIndexes(q)
	var out []Record
	var next uint64
	err := db.View(context.Background(), func(tx store.Tx) error {
		if len(ixs) == 0 {
			return tx.Scan(bucket, key(bound), true, func(_, v []byte) error {
				if len(out) == limit {
					next = out[len(out)-1].Seq
					return store.ErrStop
				}
				r, err := decode(v)
				if err != nil {
					return err
				}
				out = append(out, r)
				return nil
			})
		}
		return intersect(tx, ixs, bound, func(seq uint64) (bool, error) {
			if len(out) == limit {
				next = out[len(out)-1].Seq
				return false, nil
			}
			v := tx.Get(bucket, key(seq))
			if v == nil {
				return false, fmt.Errorf("audit: index names record %d, which is missing", seq)
			}
			r, err := decode(v)
			if err != nil {
				return false, err
			}
			out = append(out, r)
			return true, nil
		})
	})
	return out, next, err
}

// ErrCorrupt reports an index entry that cannot be read.
var ErrCorrupt = errors.New("audit: corrupt index entry")
