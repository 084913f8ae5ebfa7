package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/store"
)

// TestShutdownWhileClientsLeave: clients disconnecting while the broker shuts
// down must not hang the shutdown, which has to return having flushed and
// closed the store. It stresses the path of a mochi deadlock (its
// Clients.GetByListener read-locks twice, and a client leaving in between
// blocks both; broker.disconnectAll works around it). That window is a few
// nanoseconds wide: the benchmark hit it once with 10,000 clients leaving,
// and this test does not hit it reliably without the workaround; it guards
// the shutdown path as a whole.
func TestShutdownWhileClientsLeave(t *testing.T) {
	const n = 1500
	for round := range 4 {
		dir := t.TempDir()
		seedFleet(t, dir, n)
		b, err := broker.New(broker.Options{DataDir: dir, TCPAddr: "127.0.0.1:0", HTTPAddr: "off",
			FirstOperator: opID, FirstOperatorPassword: opPassword, Logger: testLogger(), NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		conns := make([]net.Conn, n)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 16 {
					id := fmt.Sprintf("s%05d", i)
					c, err := rawConnect(b.Addr(), id, "token-"+id)
					if err != nil {
						errs <- err
						return
					}
					conns[i] = c
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// Everyone leaves while the broker shuts down.
		for _, c := range conns {
			wg.Add(1)
			go func() { defer wg.Done(); _ = c.Close() }()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err = b.Shutdown(ctx)
		cancel()
		wg.Wait()
		if err != nil {
			t.Fatalf("round %d: shutdown: %v", round, err)
		}
	}
}

// seedFleet registers n devices s00000... with token "token-<id>" straight
// into the store of dir.
func seedFleet(t *testing.T, dir string, n int) {
	t.Helper()
	db, err := store.Open(filepath.Join(dir, "otamq.db"), &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg, err := fleet.Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		for i := range n {
			id := fmt.Sprintf("s%05d", i)
			if _, err := reg.Register(tx, fleet.Registration{ID: id}, fleet.TokenSecret("token-"+id), "test"); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func rawConnect(addr, user, pass string) (net.Conn, error) {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: user,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)}}
	if err := pk.ConnectEncode(&buf); err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(buf.Bytes()); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReader(c)
	hdr := make([]byte, 4)
	if _, err := r.Read(hdr[:1]); err != nil || hdr[0]>>4 != packets.Connack {
		c.Close()
		return nil, fmt.Errorf("no CONNACK: %v", err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
