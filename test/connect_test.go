package test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
)

// A socket that never sends CONNECT (or never starts its TLS handshake) is
// closed by the broker after the connect timeout.
func TestSilentSocketClosedAfterDeadline(t *testing.T) {
	fleetCA := newPKI(t, "fleet")
	srvCert, srvKey, _ := fleetCA.issue("otamq", true)
	const timeout = 300 * time.Millisecond
	b := startBroker(t, func(o *broker.Options) {
		o.ConnectTimeout = timeout
		o.TLSAddr = "127.0.0.1:0"
		o.TLSCert, o.TLSKey = srvCert, srvKey
	})
	for name, addr := range map[string]string{"tcp": b.Addr(), "tls": b.TLSAddr()} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// Our own read deadline only bounds the test; the broker must
			// close first.
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err = io.ReadAll(conn)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the broker never closed a silent connection")
			}
		})
	}
	// A client that does speak still connects.
	tok := b.register("d1", "device", "")
	b.device("d1", tok)
}

// A socket still silent when the broker shuts down (accepted, no CONNECT
// yet, so in no client list) is closed by the shutdown, which does not wait
// for its connect deadline. It used to run mochi's Close into a WaitGroup
// the connection's goroutine was still adding to (a race the detector
// reports), and to hold Shutdown until the deadline.
func TestShutdownClosesSilentSockets(t *testing.T) {
	b := startBroker(t, func(o *broker.Options) { o.ConnectTimeout = 10 * time.Minute })
	var conns []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", b.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// A session that does connect, so that the shutdown has a client to
	// end as well.
	tok := b.register("d1", "device", "")
	b.device("d1", tok)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with silent sockets open: %v", err)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("silent socket %d still open after the shutdown", i)
			}
		}
	}
}
