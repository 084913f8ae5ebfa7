package release

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/store"
)

// Blobs keeps the bytes of images by digest: immutable once the release is
// made (the same digest is the same bytes). The catalog calls it inside its
// store transactions. StoreBlobs, the default, keeps them in the store's
// own file, in those transactions, so an upload's bytes and its state
// change together. An implementation that keeps them elsewhere (files, an
// object store) may ignore tx, but must make a write durable before it
// returns, and must accept the same Append again (the catalog's
// transaction can be retried).
type Blobs interface {
	// Append writes data at offset of image d; offset is always the number
	// of bytes of d written so far.
	Append(tx store.Tx, d manifest.Digest, offset uint64, data []byte) error
	// ReadAt fills dst from image d at offset; the range must have been
	// written.
	ReadAt(tx store.Tx, d manifest.Digest, offset uint64, dst []byte) error
	// Delete removes every byte of image d.
	Delete(tx store.Tx, d manifest.Digest) error
}

// StoreBlobs keeps images in the store, in ChunkSize chunks keyed by
// digest and chunk number.
type StoreBlobs struct{}

var _ Blobs = StoreBlobs{}

func chunkKey(d manifest.Digest, i uint32) []byte {
	return binary.BigEndian.AppendUint32(append(make([]byte, 0, len(d)+4), d[:]...), i)
}

// Append implements Blobs: it fills the last, partial chunk first.
func (StoreBlobs) Append(tx store.Tx, d manifest.Digest, offset uint64, data []byte) error {
	for len(data) > 0 {
		i := uint32(offset / ChunkSize)
		pos := int(offset % ChunkSize)
		key := chunkKey(d, i)
		old := tx.Get(bucketBlobs, key)
		if len(old) != pos {
			return fmt.Errorf("image %s chunk %d holds %d bytes, expected %d", d, i, len(old), pos)
		}
		n := min(ChunkSize-pos, len(data))
		chunk := make([]byte, 0, pos+n)
		chunk = append(append(chunk, old...), data[:n]...)
		if err := tx.Put(bucketBlobs, key, chunk); err != nil {
			return err
		}
		offset += uint64(n)
		data = data[n:]
	}
	return nil
}

// ReadAt implements Blobs.
func (StoreBlobs) ReadAt(tx store.Tx, d manifest.Digest, offset uint64, dst []byte) error {
	for n := 0; n < len(dst); {
		off := offset + uint64(n)
		chunk := tx.Get(bucketBlobs, chunkKey(d, uint32(off/ChunkSize)))
		pos := int(off % ChunkSize)
		if pos >= len(chunk) {
			return fmt.Errorf("image %s: chunk %d missing or short", d, off/ChunkSize)
		}
		n += copy(dst[n:], chunk[pos:])
	}
	return nil
}

// Delete implements Blobs.
func (StoreBlobs) Delete(tx store.Tx, d manifest.Digest) error {
	var keys [][]byte
	if err := tx.Scan(bucketBlobs, d[:], false, func(k, _ []byte) error {
		if !bytes.HasPrefix(k, d[:]) {
			return store.ErrStop
		}
		keys = append(keys, bytes.Clone(k))
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(bucketBlobs, k); err != nil {
			return err
		}
	}
	return nil
}
