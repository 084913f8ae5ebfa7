// Package audit keeps the log of every operator request: who asked what,
// when, from where, and with what result. Records are appended inside the
// same store transaction as the change they describe, so the log and the
// state never disagree; refused requests are logged in a transaction of
// their own.
package audit

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/otamq/otamq/ota/store"
)

const bucket = "audit"

// Result of a successful request.
const ResultOK = "ok"

// Record is one audit entry.
type Record struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Role   string    `json:"role,omitempty"`
	Remote string    `json:"remote,omitempty"`
	// Action is "resource/verb", e.g. "device/register".
	Action string `json:"action"`
	Target string `json:"target,omitempty"`
	// Args is the request without its secrets.
	Args json.RawMessage `json:"args,omitempty"`
	// Result is ResultOK or the error code.
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
}

func key(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// Append adds rec to the log in tx, assigning its sequence number.
func Append(tx *store.Tx, rec Record) error {
	seq, err := tx.NextSequence(bucket)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	rec.Seq = seq
	v, err := json.Marshal(&rec)
	if err != nil {
		return fmt.Errorf("audit: encode: %w", err)
	}
	return tx.Put(bucket, key(seq), v)
}

// Query selects records for List. Empty fields match everything.
type Query struct {
	Actor  string
	Action string
	Target string
	// Before is the paging cursor: only records with a lower sequence
	// number (0: from the newest).
	Before uint64
	// Limit is the page size (default 100, at most 1000).
	Limit int
}

// List returns matching records, newest first, and the cursor of the next
// page (0 when there is none).
func List(db *store.DB, q Query) ([]Record, uint64, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	var from []byte
	if q.Before > 0 {
		from = key(q.Before - 1)
		if q.Before == 1 {
			return nil, 0, nil
		}
	}
	var out []Record
	var next uint64
	err := db.View(func(tx *store.Tx) error {
		return tx.Scan(bucket, from, true, func(_, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("audit: decode: %w", err)
			}
			if q.Actor != "" && r.Actor != q.Actor || q.Action != "" && r.Action != q.Action || q.Target != "" && r.Target != q.Target {
				return nil
			}
			if len(out) == limit {
				next = out[len(out)-1].Seq
				return store.ErrStop
			}
			out = append(out, r)
			return nil
		})
	})
	return out, next, err
}
