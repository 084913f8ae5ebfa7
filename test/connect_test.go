package test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

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

// A client that connects while the shutdown is ending the others (its
// socket accepted before the listener closed, its CONNECT read after the
// broker listed the sessions to end) is ended too, with DISCONNECT
// "server shutting down", instead of being left open until the shutdown
// gives up waiting and drops it without a word. A stuck device (its socket
// full) keeps the shutdown waiting for its disconnect grace meanwhile.
func TestShutdownEndsLateConnections(t *testing.T) {
	b, _, _, _ := stuckFleet(t, 1)
	tok := b.register("late", "device", "")
	c, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The broker accepts connections in order: once a later one has its
	// CONNACK, c has been accepted (and not left in the kernel's backlog,
	// which closing the listener resets).
	ptok := b.register("probe", "device", "")
	probe, err := rawConnect(b.Addr(), "probe", ptok)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- b.Shutdown(ctx)
	}()
	// The shutdown has begun once the listener refuses connections.
	eventually(t, 10*time.Second, func() error {
		if c2, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
			c2.Close()
			return errors.New("the listener still accepts")
		}
		return nil
	})
	rawWrite(t, c, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "late",
			UsernameFlag: true, Username: []byte("late"), PasswordFlag: true, Password: []byte(tok)}},
		(*packets.Packet).ConnectEncode)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	connected := false
	for {
		typ, body, err := readPacket(r)
		if err != nil {
			t.Fatalf("connection closed without DISCONNECT (CONNACK received: %v): %v", connected, err)
		}
		if typ == packets.Connack && len(body) >= 2 && body[1] == 0 {
			connected = true
		}
		if typ == packets.Disconnect {
			if len(body) == 0 || body[0] != packets.ErrServerShuttingDown.Code {
				t.Fatalf("DISCONNECT % x, want reason %#x", body, packets.ErrServerShuttingDown.Code)
			}
			break
		}
	}
	if !connected {
		t.Fatal("no CONNACK: the broker closed the connection before it read the CONNECT")
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// readPacket reads one MQTT packet: its type and its body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		if mul *= 128; i == 3 {
			return 0, nil, errors.New("malformed remaining length")
		}
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return h >> 4, body, err
}
