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
func (s *Service) TimelinePage(id, before string, limit int) (entries []Entry, cursors []string, more bool, err error) {
	if limit <= 0 || limit > s.o.TimelineLength {
		limit = s.o.TimelineLength
	}
	prefix := append([]byte(id), 0)
	from := append(bytes.Clone(prefix), bytes.Repeat([]byte{0xff}, 16)...)
	if before != "" {
		c, derr := hex.DecodeString(before)
		if derr != nil || len(c) != 16 {
			return nil, nil, false, fmt.Errorf("%w: timeline cursor (use the next of a page)", ErrInvalid)
		}
		from = append(bytes.Clone(prefix), c...)
	}
	entries = []Entry{}
	err = s.db.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan(bucketTimeline, from, true, func(k, v []byte) error {
			if !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+16 {
				return store.ErrStop
			}
			if before != "" && bytes.Equal(k, from) {
				return nil // the cursor's own entry, on the page before
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
