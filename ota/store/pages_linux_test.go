package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// mappedRSS is the resident part of this process's mappings of path, from
// /proc/self/smaps.
func mappedRSS(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = len(f) >= 6 && f[5] == path
			continue
		}
		if in && len(f) >= 2 && f[0] == "Rss:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			total += kb << 10
		}
	}
	return total
}

func value(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 1000) }

// fill writes n records of 1000 bytes to bucket "b".
func fill(t *testing.T, db *DB, from, n int) {
	t.Helper()
	if err := db.Update(context.Background(), func(tx Tx) error {
		for i := from; i < from+n; i++ {
			if err := tx.Put("b", fmt.Appendf(nil, "k%08d", i), value(i)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// readAll reads every record of "b" and checks it.
func readAll(t *testing.T, db *DB, n int) {
	t.Helper()
	got := 0
	if err := db.View(context.Background(), func(tx Tx) error {
		return tx.Scan("b", nil, false, func(k, v []byte) error {
			i, err := strconv.Atoi(string(k[1:]))
			if err != nil || !bytes.Equal(v, value(i)) {
				return fmt.Errorf("record %q: %d bytes, not its value", k, len(v))
			}
			got++
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Fatalf("read %d records, want %d", got, n)
	}
}

// The pages read through the map leave the process's resident memory and
// the data stays as it was.
func TestReleasePages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := Open(path, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 8000 // about 8 MiB
	fill(t, db, 0, n)
	_ = db.Close()
	if db, err = Open(path, &Options{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	readAll(t, db, n)
	before := mappedRSS(t, path)
	if before < 4<<20 {
		t.Fatalf("only %d KiB of the store mapped after reading all of it", before>>10)
	}
	if err := db.ReleasePages(); err != nil {
		t.Fatal(err)
	}
	after := mappedRSS(t, path)
	if after > before/4 {
		t.Fatalf("mapped store pages resident: %d KiB before the release, %d KiB after", before>>10, after>>10)
	}
	readAll(t, db, n)
	if again := mappedRSS(t, path); again < 4<<20 {
		t.Fatalf("reading again brought back only %d KiB", again>>10)
	}
	_ = db.Close()
	if err := db.ReleasePages(); err != ErrClosed {
		t.Fatalf("release on a closed store: %v", err)
	}
}

// Releases while writers grow the file (bbolt remaps it) and readers read:
// every record is intact.
func TestReleasePagesWhileRemapping(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "x.db"), &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	const rounds, per = 40, 500
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := db.ReleasePages(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for r := range rounds {
		fill(t, db, r*per, per)
		readAll(t, db, (r+1)*per)
	}
	close(stop)
	wg.Wait()
}

// After a bulk write the writer releases the mapped pages by itself.
func TestBulkWritesReleasePages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	// No least time between releases: the test writes faster than that.
	db, err := Open(path, &Options{NoSync: true, releaseInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	fill(t, db, 0, 8000)
	readAll(t, db, 8000)
	before := mappedRSS(t, path)
	if before < 4<<20 {
		t.Fatalf("only %d KiB of the store mapped after reading all of it", before>>10)
	}
	// Rewrite most records, in place (the file need not grow, so bbolt
	// does not remap it): about 2,000 page writes, more than releaseEvery.
	size := func() int64 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	grown := size()
	for i := range 8 {
		fill(t, db, 1000*i, 1000)
	}
	if after := mappedRSS(t, path); after > before/2 {
		t.Fatalf("mapped store pages resident: %d KiB before the bulk write, %d KiB after (file %d -> %d KiB)", before>>10, after>>10, grown>>10, size()>>10)
	}
	readAll(t, db, 8000)
}

// Within releaseInterval of a release, bulk writes release nothing more.
func TestBulkWritesReleaseAtMostOncePerInterval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := Open(path, &Options{NoSync: true, releaseInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	fill(t, db, 0, 8000) // more than releaseEvery page writes: the first release
	readAll(t, db, 8000)
	before := mappedRSS(t, path)
	for i := range 8 {
		fill(t, db, 1000*i, 1000)
	}
	if after := mappedRSS(t, path); after < before*3/4 {
		t.Fatalf("released again within the interval: %d KiB mapped before the writes, %d KiB after", before>>10, after>>10)
	}
}

// A release the interval held back is made when the interval ends, with
// no write after the burst.
func TestHeldReleaseMadeWhenIntervalEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	const interval = 10 * time.Second // far longer than the burst and the read
	db, err := Open(path, &Options{NoSync: true, releaseInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	fill(t, db, 0, 8000) // the first release, at once
	start := time.Now()
	for i := range 8 {
		fill(t, db, 1000*i, 1000) // more than releaseEvery page writes, held back
	}
	readAll(t, db, 8000)
	before := mappedRSS(t, path)
	if n := db.releases.Load(); n != 1 {
		t.Fatalf("%d releases after the burst, want 1 (the burst and the read took %v, the interval is %v)", n, time.Since(start), interval)
	}
	if before < 4<<20 {
		t.Fatalf("only %d KiB of the store mapped after reading all of it", before>>10)
	}
	deadline := time.Now().Add(30 * time.Second)
	for db.releases.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no release 30 s after the burst (interval %v)", interval)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if after := mappedRSS(t, path); after > before/4 {
		t.Fatalf("mapped store pages resident: %d KiB after the burst, %d KiB after the held release", before>>10, after>>10)
	}
	readAll(t, db, 8000)
}

// However the writes and the releases interleave (a commit may make the
// release the timer was set for, and more pages be written after it),
// once the writes stop the pages written since the last release are
// released within the interval.
func TestNoReleaseLeftPendingAfterWrites(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "x.db"), &Options{NoSync: true, releaseInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	// pages written since the last release (read without a transaction:
	// a commit would set the writer going)
	pending := func() int64 {
		st := db.bolt.Stats()
		return st.TxStats.GetWrite() - db.releasedAt.Load()
	}
	for round := range 30 {
		// write until a release happened, then once more each: the
		// writes end just after a release, with more pages written
		// since (the case where a commit made the release the timer was
		// set for)
		r0 := db.releases.Load()
		var wg sync.WaitGroup
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					done := db.releases.Load() > r0
					fill(t, db, (w*4+i%4)*1000, 1000)
					if done || i > 1000 {
						return
					}
				}
			}()
		}
		wg.Wait()
		deadline := time.Now().Add(30 * time.Second)
		for pending() >= releaseEvery {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d pages written since the last release, 30 s after the writes stopped", round, pending())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
