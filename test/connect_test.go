package test

import (
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
