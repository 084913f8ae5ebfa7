package broker

import (
	"log/slog"
	"net"
	"sync"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// mqttListener hands accepted connections to mochi as listeners.Net does,
// but owns the goroutine of each: it knows which connections are still in
// mochi's hands (also those that have not sent CONNECT, which mochi's client
// list does not hold) and can close them and wait until mochi is done with
// them. Without that, a shutdown while a socket is still silent runs mochi's
// Close into a WaitGroup that a connection goroutine is adding to, and a
// connection accepted at the last moment outlives the broker.
type mqttListener struct {
	id  string
	ln  net.Listener
	log *slog.Logger

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool // no more connections are taken
}

var _ listeners.Listener = (*mqttListener)(nil)

func newMQTTListener(id string, ln net.Listener) *mqttListener {
	return &mqttListener{id: id, ln: ln, conns: make(map[net.Conn]struct{})}
}

// ID implements listeners.Listener.
func (l *mqttListener) ID() string { return l.id }

// Address implements listeners.Listener.
func (l *mqttListener) Address() string { return l.ln.Addr().String() }

// Protocol implements listeners.Listener.
func (l *mqttListener) Protocol() string { return l.ln.Addr().Network() }

// Init implements listeners.Listener.
func (l *mqttListener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve implements listeners.Listener: it accepts until the socket closes.
func (l *mqttListener) Serve(establish listeners.EstablishFn) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			l.mu.Lock()
			closed := l.done
			l.mu.Unlock()
			if !closed && l.log != nil {
				// connectDeadline retries what passes by itself; this
				// one does not, and the listener is gone.
				l.log.Error("MQTT listener stopped accepting connections", "listener", l.id, "err", err)
			}
			return
		}
		l.mu.Lock()
		if l.done {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			err := establish(l.id, c)
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
			// Every session ends with an error here (EOF, a refused
			// CONNECT, a takeover); the broker's hooks log what matters.
			if err != nil && l.log != nil {
				l.log.Debug("connection ended", "listener", l.id, "err", err)
			}
		}()
	}
}

// Close implements listeners.Listener: it closes the socket, so that no
// connection is accepted any more. Connections already accepted are left
// to closeClients and to CloseConns.
func (l *mqttListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	first := !l.done
	l.done = true
	l.mu.Unlock()
	if first {
		closeClients(l.id)
	}
	_ = l.ln.Close()
}

// CloseConns closes every connection still in mochi's hands (those the
// shutdown disconnect did not end: silent before CONNECT, or stuck) and
// waits until mochi has let go of each.
func (l *mqttListener) CloseConns() {
	l.mu.Lock()
	l.done = true
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	// Outside the lock, and all at once: closing a TLS connection may
	// write its close_notify (bounded by a 5 s deadline), and the
	// connections' goroutines take the lock as they end.
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Close()
		}()
	}
	wg.Wait()
	l.wg.Wait()
}
