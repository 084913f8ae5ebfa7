package delivery

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"

	"github.com/otamq/otamq/ota/store"
)

// TimelinePage returns up to limit (at most the timeline's length) of id's
// timeline entries older than the cursor before ("": from the newest),
// newest first, each with the cursor that continues after it, and whether
// older entries remain. A cursor is opaque: one that a page returned.
// Pages only reach the newest TimelineLength entries: the store may hold
// a few more until its next trim (see appendTimeline).
func (s *Service) TimelinePage(id, before string, limit int) (entries []Entry, cursors []string, more bool, err error) {
	if limit <= 0 || limit > s.o.TimelineLength {
		limit = s.o.TimelineLength
	}
	prefix := append([]byte(id), 0)
	newest := append(bytes.Clone(prefix), bytes.Repeat([]byte{0xff}, 16)...)
	var cursor []byte
	if before != "" {
		c, derr := hex.DecodeString(before)
		if derr != nil || len(c) != 16 {
			return nil, nil, false, fmt.Errorf("%w: timeline cursor (use the next of a page)", ErrInvalid)
		}
		cursor = append(bytes.Clone(prefix), c...)
	}
	entries = []Entry{}
	err = s.db.View(context.Background(), func(tx store.Tx) error {
		pos := 0 // entries seen from the newest
		return tx.Scan(bucketTimeline, newest, true, func(k, v []byte) error {
			if !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+16 || pos == s.o.TimelineLength {
				return store.ErrStop
			}
			pos++
			if cursor != nil && bytes.Compare(k, cursor) >= 0 {
				return nil // newer than the cursor, or the cursor's own entry: on the pages before
			}
			if len(entries) == limit {
				more = true
				return store.ErrStop
			}
			e, err := decodeEntry(v)
			if err != nil {
				return err
			}
			entries = append(entries, e)
			cursors = append(cursors, hex.EncodeToString(k[len(prefix):]))
			return nil
		})
	})
	return entries, cursors, more, err
}
