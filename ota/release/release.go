package release

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/store"
)

// Store buckets owned by the catalog.
const (
	bucketKeys     = "keys"
	bucketReleases = "releases"
	bucketUploads  = "uploads"
	bucketBlobs    = "blobs"
)

// Limits.
const (
	// ChunkSize is the unit images are stored in.
	ChunkSize = 64 * 1024
	// DefaultMaxImageSize bounds an image.
	DefaultMaxImageSize = 64 << 20
	// MaxPartSize bounds one upload part.
	MaxPartSize = 256 * 1024
	// MaxKeyNameLen bounds a key's name.
	MaxKeyNameLen = 64
)

// Errors.
var (
	ErrNotFound    = errors.New("not found")
	ErrInvalid     = errors.New("invalid")
	ErrConflict    = errors.New("conflict")
	ErrKeyRevoked  = errors.New("signing key revoked")
	ErrOffset      = errors.New("unexpected offset")
	ErrTooLarge    = errors.New("too large")
	ErrIncomplete  = errors.New("image incomplete")
	ErrKeyExists   = errors.New("key already trusted")
	ErrNoSuchImage = errors.New("no such image")
)

// Key is a trusted release signing key.
type Key struct {
	ID        manifest.KeyID `json:"kid"`
	Name      string         `json:"name,omitempty"`
	PEM       string         `json:"pem"`
	Added     time.Time      `json:"added"`
	AddedBy   string         `json:"added_by,omitempty"`
	Revoked   bool           `json:"revoked,omitempty"`
	RevokedAt *time.Time     `json:"revoked_at,omitempty"`
	RevokedBy string         `json:"revoked_by,omitempty"`

	pub *ecdsa.PublicKey
}

// Release is an uploaded, verified firmware release.
type Release struct {
	ID            string          `json:"id"`
	Version       string          `json:"version"`
	Hardware      []string        `json:"hardware"`
	BuildID       string          `json:"build_id,omitempty"`
	MinBootloader string          `json:"min_bootloader,omitempty"`
	SecureVersion uint32          `json:"secure_version"`
	Kind          manifest.Kind   `json:"kind"`
	Sequence      uint64          `json:"sequence"`
	Size          uint64          `json:"size"`
	Digest        manifest.Digest `json:"digest"`
	KeyID         manifest.KeyID  `json:"kid"`
	// Manifest is the signed manifest exactly as uploaded.
	Manifest   []byte    `json:"manifest"`
	Created    time.Time `json:"created"`
	UploadedBy string    `json:"uploaded_by,omitempty"`
}

// ReleaseID names the release of version with image digest d.
func ReleaseID(version string, d manifest.Digest) string {
	return version + "@" + d.String()[:8]
}

// Upload is an upload in progress.
type Upload struct {
	// ID is the image digest in hex.
	ID       string          `json:"id"`
	Version  string          `json:"version"`
	Digest   manifest.Digest `json:"digest"`
	Size     uint64          `json:"size"`
	Offset   uint64          `json:"offset"`
	KeyID    manifest.KeyID  `json:"kid"`
	Manifest []byte          `json:"manifest"`
	Started  time.Time       `json:"started"`
	Updated  time.Time       `json:"updated"`
	By       string          `json:"by,omitempty"`
	// Hash is the SHA-256 state after Offset bytes.
	Hash []byte `json:"hash"`
	// Parts counts the parts written so far.
	Parts int `json:"parts,omitempty"`
}

// Options configure Open. The zero value means all defaults.
type Options struct {
	// Clock is the time. Default clock.System().
	Clock clock.Clock
	// Blobs keeps the images' bytes. Default StoreBlobs: in the store's own
	// file, in the upload's transactions.
	Blobs Blobs
	// MaxImageSize bounds an image. Default DefaultMaxImageSize.
	MaxImageSize uint64
}

// Catalog is the set of keys, releases and uploads.
type Catalog struct {
	db      store.Store
	blobs   Blobs
	now     func() time.Time
	maxSize uint64

	mu       sync.RWMutex // guards keys, releases, byDigest
	keys     map[manifest.KeyID]*Key
	releases map[string]*Release
	byDigest map[manifest.Digest]*Release
}

// Open loads the catalog from db.
func Open(db store.Store, opts *Options) (*Catalog, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Clock == nil {
		o.Clock = clock.System()
	}
	if o.Blobs == nil {
		o.Blobs = StoreBlobs{}
	}
	if o.MaxImageSize == 0 {
		o.MaxImageSize = DefaultMaxImageSize
	}
	c := &Catalog{db: db, blobs: o.Blobs, now: o.Clock.Now, maxSize: o.MaxImageSize,
		keys: map[manifest.KeyID]*Key{}, releases: map[string]*Release{}, byDigest: map[manifest.Digest]*Release{}}
	err := db.View(context.Background(), func(tx store.Tx) error {
		if err := tx.Scan(bucketKeys, nil, false, func(_, v []byte) error {
			k, err := decodeKey(v)
			if err != nil {
				return err
			}
			c.keys[k.ID] = k
			return nil
		}); err != nil {
			return err
		}
		return tx.Scan(bucketReleases, nil, false, func(_, v []byte) error {
			var r Release
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("release: %w", err)
			}
			c.releases[r.ID], c.byDigest[r.Digest] = &r, &r
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load releases: %w", err)
	}
	return c, nil
}

func decodeKey(v []byte) (*Key, error) {
	var k Key
	if err := json.Unmarshal(v, &k); err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	pub, err := manifest.ParsePublicKey([]byte(k.PEM))
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", k.ID, err)
	}
	k.pub = pub
	return &k, nil
}

// Lookup implements manifest.Keys with the trusted, unrevoked keys.
func (c *Catalog) Lookup(id manifest.KeyID) (*ecdsa.PublicKey, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	k := c.keys[id]
	if k == nil || k.Revoked {
		return nil, false
	}
	return k.pub, true
}

// Keys returns every key, trusted or revoked, by ID.
func (c *Catalog) Keys() []Key {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Key, 0, len(c.keys))
	for _, k := range c.keys {
		out = append(out, *k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID.String() < out[j].ID.String() })
	return out
}

// KeyStatus reports whether id is known and whether it is revoked.
func (c *Catalog) KeyStatus(id manifest.KeyID) (known, revoked bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	k := c.keys[id]
	return k != nil, k != nil && k.Revoked
}

// txKeys reads keys from a transaction (so that checks within a batch see
// the batch's earlier writes).
type txKeys struct{ tx store.Tx }

func (t txKeys) Lookup(id manifest.KeyID) (*ecdsa.PublicKey, bool) {
	v := t.tx.Get(bucketKeys, id[:])
	if v == nil {
		return nil, false
	}
	k, err := decodeKey(v)
	if err != nil || k.Revoked {
		return nil, false
	}
	return k.pub, true
}

// AddKey trusts the public key in pemData (PEM "PUBLIC KEY", ECDSA P-256).
func (c *Catalog) AddKey(tx store.Tx, name string, pemData []byte, actor string) (Key, error) {
	if len(name) > MaxKeyNameLen {
		return Key{}, fmt.Errorf("%w: key name is %d bytes, limit %d", ErrInvalid, len(name), MaxKeyNameLen)
	}
	pub, err := manifest.ParsePublicKey(pemData)
	if err != nil {
		return Key{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	id := manifest.KeyIDOf(pub)
	if v := tx.Get(bucketKeys, id[:]); v != nil {
		old, err := decodeKey(v)
		if err != nil {
			return Key{}, err
		}
		if old.Revoked {
			return Key{}, fmt.Errorf("%w: %s was revoked; a revoked key is never trusted again", ErrKeyRevoked, id)
		}
		return Key{}, fmt.Errorf("%w: %s", ErrKeyExists, id)
	}
	canonical, err := manifest.MarshalPublicKey(pub)
	if err != nil {
		return Key{}, err
	}
	k := &Key{ID: id, Name: name, PEM: string(canonical), Added: c.now().UTC(), AddedBy: actor, pub: pub}
	if err := c.putKey(tx, k); err != nil {
		return Key{}, err
	}
	return *k, nil
}

func (c *Catalog) putKey(tx store.Tx, k *Key) error {
	v, err := json.Marshal(k)
	if err != nil {
		return err
	}
	if err := tx.Put(bucketKeys, k.ID[:], v); err != nil {
		return err
	}
	tx.OnCommit(func() {
		c.mu.Lock()
		c.keys[k.ID] = k
		c.mu.Unlock()
	})
	return nil
}

// RevokeKey stops trusting id and returns the releases it signed: they can
// no longer be offered.
func (c *Catalog) RevokeKey(tx store.Tx, id manifest.KeyID, actor string) (Key, []Release, error) {
	v := tx.Get(bucketKeys, id[:])
	if v == nil {
		return Key{}, nil, fmt.Errorf("key %s: %w", id, ErrNotFound)
	}
	k, err := decodeKey(v)
	if err != nil {
		return Key{}, nil, err
	}
	var affected []Release
	if err := tx.Scan(bucketReleases, nil, false, func(_, v []byte) error {
		var r Release
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		if r.KeyID == id {
			affected = append(affected, r)
		}
		return nil
	}); err != nil {
		return Key{}, nil, err
	}
	if !k.Revoked {
		now := c.now().UTC()
		k.Revoked, k.RevokedAt, k.RevokedBy = true, &now, actor
		if err := c.putKey(tx, k); err != nil {
			return Key{}, nil, err
		}
	}
	return *k, affected, nil
}

// Filter selects releases. Empty fields match everything.
type Filter struct {
	Version  string
	Hardware string
}

// Releases returns the releases matching f, newest first.
func (c *Catalog) Releases(f Filter) []Release {
	c.mu.RLock()
	out := make([]Release, 0, len(c.releases))
	for _, r := range c.releases {
		if f.Version != "" && r.Version != f.Version || f.Hardware != "" && !slices.Contains(r.Hardware, f.Hardware) {
			continue
		}
		out = append(out, *r)
	}
	c.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Release returns the release with id.
func (c *Catalog) Release(id string) (Release, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	r := c.releases[id]
	if r == nil {
		return Release{}, false
	}
	return *r, true
}

// ByDigest returns the release whose image has digest d.
func (c *Catalog) ByDigest(d manifest.Digest) (Release, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	r := c.byDigest[d]
	if r == nil {
		return Release{}, false
	}
	return *r, true
}

// Count returns the number of releases.
func (c *Catalog) Count() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.releases)
}

// Offerable reports why r may not be offered (its signing key is revoked or
// unknown), or nil.
func (c *Catalog) Offerable(r Release) error {
	known, revoked := c.KeyStatus(r.KeyID)
	switch {
	case !known:
		return fmt.Errorf("%w: release %s is signed by key %s, which is not trusted", ErrKeyRevoked, r.ID, r.KeyID)
	case revoked:
		return fmt.Errorf("%w: release %s is signed by key %s, which is revoked", ErrKeyRevoked, r.ID, r.KeyID)
	}
	return nil
}

// BeginUpload starts (or resumes) the upload of the release whose signed
// manifest is signed. The signature is checked against the trusted keys and
// the manifest against existing releases first. If the same release exists
// already, it is returned (the upload is done). Errors wrap
// manifest.ErrMalformed, manifest.ErrUnknownKey, manifest.ErrBadSignature,
// ErrConflict or ErrTooLarge.
func (c *Catalog) BeginUpload(tx store.Tx, signed []byte, actor string) (Upload, *Release, error) {
	s, err := c.verify(tx, signed)
	if err != nil {
		return Upload{}, nil, err
	}
	m := &s.Manifest
	if m.ImageSize > c.maxSize {
		return Upload{}, nil, fmt.Errorf("%w: image of %d bytes, limit %d", ErrTooLarge, m.ImageSize, c.maxSize)
	}
	existing, err := c.conflicts(tx, s)
	if err != nil || existing != nil {
		return Upload{}, existing, err
	}
	id := m.ImageDigest.String()
	if v := tx.Get(bucketUploads, []byte(id)); v != nil {
		var u Upload
		if err := json.Unmarshal(v, &u); err != nil {
			return Upload{}, nil, err
		}
		if !bytes.Equal(u.Manifest, signed) {
			return Upload{}, nil, fmt.Errorf("%w: an upload of this image with another manifest (version %s) is in progress; abort it first", ErrConflict, u.Version)
		}
		return u, nil, nil // resume
	}
	h, err := marshalHash(sha256.New())
	if err != nil {
		return Upload{}, nil, err
	}
	now := c.now().UTC()
	u := Upload{ID: id, Version: m.Version, Digest: m.ImageDigest, Size: m.ImageSize, KeyID: s.KeyID,
		Manifest: bytes.Clone(signed), Started: now, Updated: now, By: actor, Hash: h}
	return u, nil, putUpload(tx, &u)
}

// conflicts checks a verified manifest against the releases: the same
// release again returns it; the same version for an overlapping hardware
// with other bytes, or the same image under another manifest, is a
// conflict.
func (c *Catalog) conflicts(tx store.Tx, s *manifest.Signed) (*Release, error) {
	m := &s.Manifest
	var found *Release
	err := tx.Scan(bucketReleases, nil, false, func(_, v []byte) error {
		var r Release
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		switch {
		case r.Digest == m.ImageDigest && bytes.Equal(r.Manifest, s.Raw):
			found = &r
			return store.ErrStop
		case r.Digest == m.ImageDigest:
			return fmt.Errorf("%w: this image is already release %s, under another manifest", ErrConflict, r.ID)
		case r.Version == m.Version && overlaps(r.Hardware, m.Hardware):
			return fmt.Errorf("%w: release %s has version %s for %v with other bytes (digest %s)",
				ErrConflict, r.ID, r.Version, intersect(r.Hardware, m.Hardware), r.Digest)
		}
		return nil
	})
	return found, err
}

// verify checks a signed manifest against the keys trusted in tx, telling
// a revoked key (ErrKeyRevoked) from one never trusted
// (manifest.ErrUnknownKey).
func (c *Catalog) verify(tx store.Tx, signed []byte) (*manifest.Signed, error) {
	s, err := manifest.Verify(signed, txKeys{tx})
	if errors.Is(err, manifest.ErrUnknownKey) {
		if p, perr := manifest.Parse(signed); perr == nil {
			if v := tx.Get(bucketKeys, p.KeyID[:]); v != nil {
				if k, kerr := decodeKey(v); kerr == nil && k.Revoked {
					return nil, fmt.Errorf("%w: manifest signed by %s, revoked %s", ErrKeyRevoked, k.ID, k.RevokedAt.Format(time.RFC3339))
				}
			}
		}
	}
	return s, err
}

func overlaps(a, b []string) bool { return len(intersect(a, b)) > 0 }

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func putUpload(tx store.Tx, u *Upload) error {
	v, err := json.Marshal(u)
	if err != nil {
		return err
	}
	return tx.Put(bucketUploads, []byte(u.ID), v)
}

func marshalHash(h hash.Hash) ([]byte, error) {
	return h.(encoding.BinaryMarshaler).MarshalBinary()
}

// AppendUpload writes data at offset of upload id. offset must be what the
// upload has so far (ErrOffset says which). When the last byte arrives the
// digest is checked and the release created in the same transaction; a
// digest mismatch returns manifest.ErrDigestMismatch and the caller should
// AbortUpload.
func (c *Catalog) AppendUpload(tx store.Tx, id string, offset uint64, data []byte, actor string) (Upload, *Release, error) {
	v := tx.Get(bucketUploads, []byte(id))
	if v == nil {
		return Upload{}, nil, fmt.Errorf("upload %s: %w (send the manifest first)", id, ErrNotFound)
	}
	var u Upload
	if err := json.Unmarshal(v, &u); err != nil {
		return Upload{}, nil, err
	}
	switch {
	case offset != u.Offset:
		return u, nil, fmt.Errorf("%w: the broker has %d bytes of %s; send from offset %d", ErrOffset, u.Offset, id, u.Offset)
	case len(data) == 0:
		return u, nil, fmt.Errorf("%w: empty part", ErrInvalid)
	case len(data) > MaxPartSize:
		return u, nil, fmt.Errorf("%w: part of %d bytes, limit %d", ErrTooLarge, len(data), MaxPartSize)
	case offset+uint64(len(data)) > u.Size:
		return u, nil, fmt.Errorf("%w: part ends at %d, past the image size %d", ErrInvalid, offset+uint64(len(data)), u.Size)
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(u.Hash); err != nil {
		return u, nil, fmt.Errorf("upload %s: hash state: %w", id, err)
	}
	h.Write(data)
	if err := c.blobs.Append(tx, u.Digest, offset, data); err != nil {
		return u, nil, err
	}
	var err error
	if u.Hash, err = marshalHash(h); err != nil {
		return u, nil, err
	}
	u.Offset += uint64(len(data))
	u.Parts++
	u.Updated = c.now().UTC()
	if u.Offset < u.Size {
		return u, nil, putUpload(tx, &u)
	}
	var got manifest.Digest
	copy(got[:], h.Sum(nil))
	if got != u.Digest {
		return u, nil, fmt.Errorf("%w: the uploaded image's SHA-256 is %s, the manifest says %s", manifest.ErrDigestMismatch, got, u.Digest)
	}
	// The key may have been revoked, or a conflicting release completed,
	// while this upload was under way.
	s, err := c.verify(tx, u.Manifest)
	if err != nil {
		return u, nil, err
	}
	if existing, err := c.conflicts(tx, s); err != nil || existing != nil {
		if err == nil {
			err = fmt.Errorf("%w: release %s already exists", ErrConflict, existing.ID)
		}
		return u, nil, err
	}
	m := &s.Manifest
	r := &Release{ID: ReleaseID(m.Version, m.ImageDigest), Version: m.Version, Hardware: m.Hardware, BuildID: m.BuildID,
		MinBootloader: m.MinBootloader, SecureVersion: m.SecureVersion, Kind: m.Kind, Sequence: m.Sequence,
		Size: m.ImageSize, Digest: m.ImageDigest, KeyID: s.KeyID, Manifest: u.Manifest, Created: u.Updated, UploadedBy: actor}
	rv, err := json.Marshal(r)
	if err != nil {
		return u, nil, err
	}
	if err := tx.Put(bucketReleases, []byte(r.ID), rv); err != nil {
		return u, nil, err
	}
	if err := tx.Delete(bucketUploads, []byte(id)); err != nil {
		return u, nil, err
	}
	tx.OnCommit(func() {
		c.mu.Lock()
		c.releases[r.ID], c.byDigest[r.Digest] = r, r
		c.mu.Unlock()
	})
	return u, r, nil
}

// AbortUpload removes upload id and every byte it stored. A missing upload
// is not an error.
func (c *Catalog) AbortUpload(tx store.Tx, id string) error {
	v := tx.Get(bucketUploads, []byte(id))
	if v == nil {
		return nil
	}
	var u Upload
	if err := json.Unmarshal(v, &u); err != nil {
		return err
	}
	if err := c.blobs.Delete(tx, u.Digest); err != nil {
		return err
	}
	return tx.Delete(bucketUploads, []byte(id))
}

// Upload returns the upload in progress with id.
func (c *Catalog) Upload(id string) (Upload, bool, error) {
	var u Upload
	found := false
	err := c.db.View(context.Background(), func(tx store.Tx) error {
		v := tx.Get(bucketUploads, []byte(id))
		if v == nil {
			return nil
		}
		found = true
		return json.Unmarshal(v, &u)
	})
	return u, found, err
}

// Uploads returns the uploads in progress.
func (c *Catalog) Uploads() ([]Upload, error) {
	var out []Upload
	err := c.db.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan(bucketUploads, nil, false, func(_, v []byte) error {
			var u Upload
			if err := json.Unmarshal(v, &u); err != nil {
				return err
			}
			out = append(out, u)
			return nil
		})
	})
	return out, err
}

// ReadBlocks reads count consecutive blocks of size bytes of the released
// image d from offset (fewer at the end of the image) in one read
// transaction, and calls fn with each block's offset and data. data is only
// valid during the call, and fn must not use the store. It stops at fn's
// first error and returns it.
func (c *Catalog) ReadBlocks(ctx context.Context, d manifest.Digest, offset uint64, size, count int, fn func(off uint64, data []byte) error) error {
	r, ok := c.ByDigest(d)
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoSuchImage, d)
	}
	if offset >= r.Size || size <= 0 {
		return fmt.Errorf("%w: offset %d, block size %d, image of %d bytes", ErrInvalid, offset, size, r.Size)
	}
	buf := blockBufs.get(size)
	defer blockBufs.put(buf)
	return c.db.View(ctx, func(tx store.Tx) error {
		for i := 0; i < count && offset < r.Size; i++ {
			n := int(min(uint64(size), r.Size-offset))
			if err := c.blobs.ReadAt(tx, d, offset, buf[:n]); err != nil {
				return err
			}
			if err := fn(offset, buf[:n]); err != nil {
				return err
			}
			offset += uint64(n)
		}
		return nil
	})
}

// blockBufs recycles ReadBlocks' scratch buffers.
var blockBufs bufPool

type bufPool struct{ p sync.Pool }

func (b *bufPool) get(n int) []byte {
	if v, ok := b.p.Get().(*[]byte); ok && cap(*v) >= n {
		return (*v)[:n]
	}
	return make([]byte, n)
}

func (b *bufPool) put(buf []byte) { b.p.Put(&buf) }
