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
// a few more until its next trim (see putEntries). Entries the device's
// offer record carries are merged in (deferred.go).
func (s *Service) TimelinePage(id, before string, limit int) (entries []Entry, cursors []string, more bool, err error) {
	if limit <= 0 || limit > s.o.TimelineLength {
		limit = s.o.TimelineLength
	}
	var cursor []byte
	if before != "" {
		c, derr := hex.DecodeString(before)
		if derr != nil || len(c) != 16 {
			return nil, nil, false, fmt.Errorf("%w: timeline cursor (use the next of a page)", ErrInvalid)
		}
		cursor = c
	}
	entries = []Entry{}
	err = s.db.View(context.Background(), func(tx store.Tx) error {
		recs, err := s.newestEntries(tx, id, s.o.TimelineLength)
		if err != nil {
			return err
		}
		for i := range recs {
			if cursor != nil && bytes.Compare(recs[i].key, cursor) >= 0 {
				continue // newer than the cursor, or the cursor's own entry: on the pages before
			}
			if len(entries) == limit {
				more = true
				break
			}
			e, err := recs[i].decode()
			if err != nil {
				return err
			}
			entries = append(entries, e)
			cursors = append(cursors, hex.EncodeToString(recs[i].key))
		}
		return nil
	})
	return entries, cursors, more, err
}
