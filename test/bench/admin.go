package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/store"
)

func contextBackground() context.Context { return context.Background() }

// benchAdmin: durable writes per second through the group-commit writer
// against one transaction (two fdatasyncs) per write, and the whole admin
// path (device/register over MQTT, durable before the reply).
func benchAdmin() error {
	n := *adminN
	const writers = 64
	fmt.Printf("== durable writes: %d writes of ~300 bytes, fsync on\n", n)
	dir, err := os.MkdirTemp("", "otamq-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	value := make([]byte, 300)

	open := func(name string) (*store.DB, error) {
		return store.Open(filepath.Join(dir, name), &store.Options{Logger: quiet})
	}
	put := func(i int64) func(tx store.Tx) error {
		return func(tx store.Tx) error { return tx.Put("bench", fmt.Appendf(nil, "%012d", i), value) }
	}

	// Baseline: one writer, one transaction per write.
	db, err := open("solo.db")
	if err != nil {
		return err
	}
	start := time.Now()
	for i := range int64(n) {
		if err := db.UpdateNow(put(i)); err != nil {
			return err
		}
	}
	solo := float64(n) / time.Since(start).Seconds()
	_ = db.Close()

	concurrent := func(name string, write func(db *store.DB, i int64) error) (float64, error) {
		db, err := open(name)
		if err != nil {
			return 0, err
		}
		defer db.Close()
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		start := time.Now()
		for range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1)
					if i > int64(n) {
						return
					}
					if err := write(db, i); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return 0, err
		}
		return float64(n) / time.Since(start).Seconds(), nil
	}
	perWrite, err := concurrent("tx-per-write.db", func(db *store.DB, i int64) error { return db.UpdateNow(put(i)) })
	if err != nil {
		return err
	}
	group, err := concurrent("group.db", func(db *store.DB, i int64) error { return db.Update(context.Background(), put(i)) })
	if err != nil {
		return err
	}

	// The admin path end to end.
	bdir := filepath.Join(dir, "broker")
	b, err := otamqBroker(bdir, false)
	if err != nil {
		return err
	}
	defer b.Shutdown(context.Background())
	c, err := rpc.Dial(context.Background(), rpc.Config{URL: "mqtt://" + b.Addr(), Username: "bench", Password: benchOperatorPassword, Timeout: time.Minute})
	if err != nil {
		return err
	}
	defer c.Close()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	start = time.Now()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if err := c.Call(context.Background(), "device/register", map[string]any{"id": fmt.Sprintf("r%06d", i), "hardware": "esp32-v2"}, nil); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	e2e := float64(n) / time.Since(start).Seconds()
	if failed.Load() > 0 {
		return fmt.Errorf("%d admin requests failed", failed.Load())
	}

	fmt.Printf("one writer, one transaction per write     %8.0f writes/s  (the single-fsync baseline)\n", solo)
	fmt.Printf("%d writers, one transaction per write     %8.0f writes/s  %.1fx baseline\n", writers, perWrite, perWrite/solo)
	fmt.Printf("%d writers, group commit (store.Update)   %8.0f writes/s  %.1fx baseline\n", writers, group, group/solo)
	fmt.Printf("device/register over MQTT, %d in flight   %8.0f req/s     %.1fx baseline (each: client record + audit record, durable before the reply)\n",
		writers, e2e, e2e/solo)
	return nil
}
