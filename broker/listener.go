package broker

import (
	"errors"
	"log/slog"
	"net"
	"time"
)

// connectDeadline wraps a listener so that every accepted connection must
// finish its TLS handshake and send CONNECT before a deadline: mochi sets no
// deadline until CONNECT has been read, so a socket that says nothing would
// be held forever. mochi replaces the deadline with the keepalive one right
// after reading CONNECT.
//
// It also keeps accepting through temporary errors (running out of file
// descriptors): mochi's listener loop stops for good at the first Accept
// error.
type connectDeadline struct {
	net.Listener
	timeout time.Duration
	log     *slog.Logger
}

// Accept implements net.Listener.
func (l *connectDeadline) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if err := c.SetDeadline(time.Now().Add(l.timeout)); err != nil {
				_ = c.Close()
				continue
			}
			return c, nil
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		var ne net.Error
		if !errors.As(err, &ne) && !isTemporary(err) {
			return nil, err
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		l.log.Warn("accept failed; retrying", "addr", l.Addr().String(), "err", err, "backoff", backoff)
		time.Sleep(backoff)
	}
}

// isTemporary reports errors such as EMFILE that go away by themselves.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
