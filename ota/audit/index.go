package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/otamq/otamq/ota/store"
)

// An index entry's key is uvarint(len(value)) ‖ value ‖ seq (8 bytes, big
// endian), with an empty value: the length makes the prefix of one value
// match no other value's entries, so a value's entries are contiguous and
// ordered by sequence number.

type index struct {
	bucket string
	value  string
}

func indexPrefix(value string) []byte {
	p := binary.AppendUvarint(make([]byte, 0, len(value)+binary.MaxVarintLen64+8), uint64(len(value)))
	return append(p, value...)
}

func indexEntry(value string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(indexPrefix(value), seq)
}

// indexesOf returns the index entries of a record, with its values bounded
// as Append stores them (records written before fields were bounded are
// indexed by their bounded value too).
func indexesOf(r *Record) []index {
	actor, _ := field(r.Actor, MaxActorLen)
	action, _ := field(r.Action, MaxActionLen)
	ixs := []index{{bucketActor, actor}, {bucketAction, action}}
	if r.Target != "" {
		target, _ := field(r.Target, MaxTargetLen)
		ixs = append(ixs, index{bucketTarget, target})
	}
	return ixs
}

// queryIndexes returns the indexes q filters on, the rarest kind first.
func queryIndexes(q Query) []index {
	var ixs []index
	for _, f := range []struct {
		bucket, value string
		limit         int
	}{
		{bucketTarget, q.Target, MaxTargetLen},
		{bucketActor, q.Actor, MaxActorLen},
		{bucketAction, q.Action, MaxActionLen},
	} {
		if f.value != "" {
			v, _ := field(f.value, f.limit)
			ixs = append(ixs, index{f.bucket, v})
		}
	}
	return ixs
}

func putIndex(tx store.Tx, r *Record) error {
	for _, ix := range indexesOf(r) {
		if err := tx.Put(ix.bucket, indexEntry(ix.value, r.Seq), []byte{}); err != nil {
			return fmt.Errorf("audit: index: %w", err)
		}
	}
	return nil
}

// seekLE returns the largest sequence number ≤ at that ix holds.
func seekLE(tx store.Tx, ix index, at uint64) (uint64, bool, error) {
	prefix := indexPrefix(ix.value)
	var seq uint64
	found := false
	var bad error
	err := tx.Scan(ix.bucket, binary.BigEndian.AppendUint64(bytes.Clone(prefix), at), true, func(k, _ []byte) error {
		if bytes.HasPrefix(k, prefix) {
			if len(k) != len(prefix)+8 {
				bad = fmt.Errorf("%w in %s", ErrCorrupt, ix.bucket)
			} else {
				seq, found = binary.BigEndian.Uint64(k[len(prefix):]), true
			}
		}
		return store.ErrStop
	})
	if err == nil {
		err = bad
	}
	return seq, found, err
}

// intersect calls emit with every sequence number ≤ at that all of ixs
// hold, in decreasing order, until emit returns false. It leapfrogs: each
// index is sought to the candidate, and the lowest answer becomes the next
// candidate, so it reads about as many entries as the rarest value has in
// the range rather than the whole log.
func intersect(tx store.Tx, ixs []index, at uint64, emit func(seq uint64) (bool, error)) error {
	cand := at
	for {
		low, agree := cand, true
		for _, ix := range ixs {
			s, ok, err := seekLE(tx, ix, cand)
			if err != nil || !ok {
				return err
			}
			if s != cand {
				agree = false
				low = min(low, s)
			}
		}
		if !agree {
			cand = low
			continue
		}
		more, err := emit(cand)
		if err != nil || !more || cand == 0 {
			return err
		}
		cand--
	}
}

// jsonString encodes s as a JSON string without HTML escaping.
func jsonString(s string) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
