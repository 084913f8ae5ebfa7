package release

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/store"
)

type env struct {
	t   *testing.T
	db  store.Store
	cat *Catalog
	key *ecdsa.PrivateKey
	pub []byte
}

func setup(t *testing.T) *env {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "x.db"), &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	cat, err := Open(db, &Options{MaxImageSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := manifest.GenerateKey()
	pub, _ := manifest.MarshalPublicKey(&key.PublicKey)
	e := &env{t: t, db: db, cat: cat, key: key, pub: pub}
	e.update(func(tx store.Tx) error { _, err := cat.AddKey(tx, "k", pub, "t"); return err })
	return e
}

func (e *env) update(fn func(tx store.Tx) error) error {
	return e.db.Update(context.Background(), fn)
}

func (e *env) signed(version string, hw []string, img []byte) []byte {
	e.t.Helper()
	n, d, _ := manifest.HashImage(bytes.NewReader(img))
	b, err := manifest.Sign(&manifest.Manifest{Sequence: 1, Version: version, Hardware: hw, ImageSize: n, ImageDigest: d}, e.key)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// upload sends img in parts of part bytes.
func (e *env) upload(signed, img []byte, part int) (*Release, error) {
	var u Upload
	var r *Release
	if err := e.update(func(tx store.Tx) error {
		var err error
		u, r, err = e.cat.BeginUpload(tx, signed, "t")
		return err
	}); err != nil || r != nil {
		return r, err
	}
	for off := u.Offset; off < uint64(len(img)); {
		end := min(off+uint64(part), uint64(len(img)))
		if err := e.update(func(tx store.Tx) error {
			var err error
			u, r, err = e.cat.AppendUpload(tx, u.ID, off, img[off:end], "t")
			return err
		}); err != nil {
			return nil, err
		}
		off = end
	}
	return r, nil
}

func TestUploadAndReadAcrossChunks(t *testing.T) {
	e := setup(t)
	img := random(3*ChunkSize + 1234)
	// Odd part sizes make parts straddle chunk boundaries.
	r, err := e.upload(e.signed("1.0.0", []string{"hw"}, img), img, 40_001)
	if err != nil || r == nil {
		t.Fatalf("upload: %v %v", r, err)
	}
	for _, c := range []struct{ off, n int }{{0, 10}, {ChunkSize - 5, 10}, {ChunkSize, ChunkSize}, {3 * ChunkSize, 5000}, {len(img) - 1, 1}} {
		var got []byte
		err := e.cat.ReadBlocks(context.Background(), r.Digest, uint64(c.off), c.n, 1, func(_ uint64, data []byte) error {
			got = bytes.Clone(data)
			return nil
		})
		want := min(c.n, len(img)-c.off)
		if err != nil || !bytes.Equal(got, img[c.off:c.off+want]) {
			t.Errorf("read %d+%d: %d bytes, %v", c.off, c.n, len(got), err)
		}
	}
	// Several blocks in one read, the last one short.
	var offs []uint64
	var all []byte
	if err := e.cat.ReadBlocks(context.Background(), r.Digest, uint64(len(img)-2500), 1000, 5, func(off uint64, data []byte) error {
		offs = append(offs, off)
		all = append(all, data...)
		return nil
	}); err != nil || len(offs) != 3 || !bytes.Equal(all, img[len(img)-2500:]) {
		t.Errorf("blocks to the end: offsets %v, %d bytes, %v", offs, len(all), err)
	}
	if err := e.cat.ReadBlocks(context.Background(), r.Digest, uint64(len(img)), 1, 1, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrInvalid) {
		t.Errorf("read past the end: %v", err)
	}
	// The catalog reloads from the store.
	cat2, err := Open(e.db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := cat2.Release(r.ID); !ok || got.Digest != r.Digest {
		t.Fatal("release not reloaded")
	}
}

func TestUploadRules(t *testing.T) {
	e := setup(t)
	img := random(5000)
	signed := e.signed("2.0.0", []string{"a", "b"}, img)
	r, err := e.upload(signed, img, 5000)
	if err != nil {
		t.Fatal(err)
	}
	// The same release again: returned as done.
	if again, err := e.upload(signed, img, 5000); err != nil || again == nil || again.ID != r.ID {
		t.Fatalf("same release again: %v %v", again, err)
	}
	// Same version, overlapping hardware, other bytes.
	other := random(5000)
	if _, err := e.upload(e.signed("2.0.0", []string{"b", "c"}, other), other, 5000); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting release: %v", err)
	}
	// Same version for other hardware is fine.
	if _, err := e.upload(e.signed("2.0.0", []string{"c"}, other), other, 5000); err != nil {
		t.Fatalf("same version for other hardware: %v", err)
	}
	// Too large.
	big := make([]byte, 2<<20)
	if _, err := e.upload(e.signed("3.0.0", []string{"a"}, big), big, MaxPartSize); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	// A part at the wrong offset, and past the end.
	img3 := random(10_000)
	var u Upload
	_ = e.update(func(tx store.Tx) error {
		var err error
		u, _, err = e.cat.BeginUpload(tx, e.signed("4.0.0", []string{"a"}, img3), "t")
		return err
	})
	if err := e.update(func(tx store.Tx) error { _, _, err := e.cat.AppendUpload(tx, u.ID, 5, img3[:10], "t"); return err }); !errors.Is(err, ErrOffset) {
		t.Fatalf("wrong offset: %v", err)
	}
	if err := e.update(func(tx store.Tx) error {
		_, _, err := e.cat.AppendUpload(tx, u.ID, 0, random(10_001), "t")
		return err
	}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("past the end: %v", err)
	}
	// Abort removes every trace.
	_ = e.update(func(tx store.Tx) error { _, _, err := e.cat.AppendUpload(tx, u.ID, 0, img3[:7000], "t"); return err })
	if err := e.update(func(tx store.Tx) error { return e.cat.AbortUpload(tx, u.ID) }); err != nil {
		t.Fatal(err)
	}
	_ = e.db.View(context.Background(), func(tx store.Tx) error {
		if tx.Get(bucketUploads, []byte(u.ID)) != nil || tx.Get(bucketBlobs, chunkKey(u.Digest, 0)) != nil {
			t.Error("aborted upload left data")
		}
		return nil
	})
}

func TestKeys(t *testing.T) {
	e := setup(t)
	kid := manifest.KeyIDOf(&e.key.PublicKey)
	if err := e.update(func(tx store.Tx) error { _, err := e.cat.AddKey(tx, "again", e.pub, "t"); return err }); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("adding a key twice: %v", err)
	}
	if err := e.update(func(tx store.Tx) error { _, err := e.cat.AddKey(tx, "bad", []byte("not pem"), "t"); return err }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("garbage key: %v", err)
	}
	img := random(100)
	r, _ := e.upload(e.signed("1.0.0", []string{"a"}, img), img, 100)
	var affected []Release
	if err := e.update(func(tx store.Tx) error { var err error; _, affected, err = e.cat.RevokeKey(tx, kid, "t"); return err }); err != nil {
		t.Fatal(err)
	}
	if len(affected) != 1 || affected[0].ID != r.ID {
		t.Fatalf("affected %+v", affected)
	}
	if err := e.cat.Offerable(*r); !errors.Is(err, ErrKeyRevoked) {
		t.Fatalf("offerable after revocation: %v", err)
	}
	if _, ok := e.cat.Lookup(kid); ok {
		t.Fatal("revoked key still trusted")
	}
	if err := e.update(func(tx store.Tx) error { _, err := e.cat.AddKey(tx, "back", e.pub, "t"); return err }); !errors.Is(err, ErrKeyRevoked) {
		t.Fatalf("re-adding a revoked key: %v", err)
	}
	img2 := random(100)
	if _, err := e.upload(e.signed("1.0.1", []string{"a"}, img2), img2, 100); !errors.Is(err, ErrKeyRevoked) {
		t.Fatalf("upload signed by a revoked key: %v", err)
	}
}
