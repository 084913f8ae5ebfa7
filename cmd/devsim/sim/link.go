package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// link is one MQTT connection of a device.
type link interface {
	// publish sends a message. QoS 1 does not wait for the PUBACK (like
	// the agent, which hands a message to its MQTT library and goes on).
	// It may be called with the device's mutex held: it only writes to the
	// socket.
	publish(topic string, payload []byte, qos byte) error
	// subscribe subscribes to one filter and waits for the SUBACK. Never
	// called with the device's mutex held.
	subscribe(ctx context.Context, filter string, qos byte) error
	// abort closes the socket without a DISCONNECT: the device lost power
	// or its process ended. It does not block.
	abort()
	// disconnect sends a DISCONNECT and closes; it waits for the client's
	// goroutines, so it is never called with the device's mutex held.
	disconnect()
	// flush waits until every QoS 1 message published has its PUBACK, the
	// link has closed or ctx ends (the agent's POSIX port flushes its
	// MQTT client this way before a software reset). Never called with
	// the device's mutex held.
	flush(ctx context.Context)
	// done is closed when every goroutine of the link has ended.
	done() <-chan struct{}
}

// linkHandler receives what a link reads. Both functions are called from
// the link's goroutines, never with a lock of the link held; lost may be
// called more than once, also after abort or disconnect.
type linkHandler struct {
	message func(topic string, payload []byte)
	lost    func(err error)
}

// dialConfig is what a connection needs.
type dialConfig struct {
	addr      string
	id, token string
	keepAlive uint16
	maxPacket uint32 // the Maximum Packet Size announced (v5)
	timeout   time.Duration
}

// ErrRefused wraps a CONNACK that refused the connection.
var ErrRefused = errors.New("connection refused")

// errSubRefused wraps a SUBACK that refused a subscription.
var errSubRefused = errors.New("subscription refused")

// receiveMaximum is the Receive Maximum the devices announce. paho sizes
// the channel of received messages by it (65,535 pointers, 512 KiB per
// client, without it). A device has a few QoS 1 messages in flight at most
// (an offer, a command), and its QoS 0 blocks are one window.
const receiveMaximum = 64

// dialV5 connects with paho.golang over MQTT 5.
func dialV5(ctx context.Context, c dialConfig, h linkHandler) (link, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	l := &pahoLink{conn: conn, timeout: c.timeout, sess: &countingSession{SessionManager: state.NewInMemory()}}
	l.cli = paho.NewClient(paho.ClientConfig{
		ClientID: c.id,
		Conn:     conn,
		Session:  l.sess,
		// Set here, not with AddOnPublishReceived (lost on reconnect,
		// paho.golang #326; a new client per connection avoids that too).
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			h.message(pr.Packet.Topic, pr.Packet.Payload)
			return true, nil
		}},
		OnClientError: h.lost,
		OnServerDisconnect: func(d *paho.Disconnect) {
			reason := ""
			if d.Properties != nil {
				reason = d.Properties.ReasonString
			}
			h.lost(fmt.Errorf("the broker disconnected (reason 0x%02x %s)", d.ReasonCode, reason))
		},
		PacketTimeout: c.timeout,
	})
	rm, mp := uint16(receiveMaximum), c.maxPacket
	cp := &paho.Connect{ClientID: c.id, KeepAlive: c.keepAlive, CleanStart: true,
		Username: c.id, UsernameFlag: true, Password: []byte(c.token), PasswordFlag: c.token != "",
		Properties: &paho.ConnectProperties{ReceiveMaximum: &rm}}
	if mp > 0 {
		cp.Properties.MaximumPacketSize = &mp
	}
	ca, err := l.cli.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		if ca != nil && ca.ReasonCode >= 0x80 {
			reason := ""
			if ca.Properties != nil {
				reason = ca.Properties.ReasonString
			}
			return nil, fmt.Errorf("%w: CONNACK 0x%02x %s", ErrRefused, ca.ReasonCode, reason)
		}
		return nil, err
	}
	return l, nil
}

type pahoLink struct {
	cli     *paho.Client
	conn    net.Conn
	timeout time.Duration
	sess    *countingSession
}

// countingSession is paho's in-memory session that also counts the QoS 1
// messages published and not yet acknowledged, for flush.
type countingSession struct {
	session.SessionManager

	mu       sync.Mutex // guards inflight, idle
	inflight int
	idle     chan struct{} // closed when inflight drops to 0
}

func (s *countingSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	err := s.SessionManager.AddToSession(ctx, p, resp)
	if err == nil && p.Type() == packets.PUBLISH {
		s.mu.Lock()
		s.inflight++
		s.mu.Unlock()
	}
	return err
}

func (s *countingSession) PacketReceived(recv *packets.ControlPacket, pubs chan<- *packets.Publish) error {
	if recv.Type == packets.PUBACK {
		s.mu.Lock()
		if s.inflight > 0 {
			s.inflight--
		}
		if s.inflight == 0 && s.idle != nil {
			close(s.idle)
			s.idle = nil
		}
		s.mu.Unlock()
	}
	return s.SessionManager.PacketReceived(recv, pubs)
}

// wait returns a channel closed once nothing is in flight.
func (s *countingSession) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
	}
	return s.idle
}

func (l *pahoLink) flush(ctx context.Context) {
	select {
	case <-l.sess.wait():
	case <-l.cli.Done():
	case <-ctx.Done():
	}
}

func (l *pahoLink) publish(topic string, payload []byte, qos byte) error {
	p := &paho.Publish{Topic: topic, QoS: qos, Payload: payload}
	if qos == 0 {
		_, err := l.cli.Publish(context.Background(), p)
		return err
	}
	// AsyncSend only waits for a packet identifier, which is there unless
	// the broker's Receive Maximum of unacknowledged messages is reached.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := l.cli.PublishWithOptions(ctx, p, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
	return err
}

func (l *pahoLink) subscribe(ctx context.Context, filter string, qos byte) error {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	sa, err := l.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil && sa != nil {
		return fmt.Errorf("%w: %s: reason 0x%02x", errSubRefused, filter, sa.Reasons)
	}
	return err
}

func (l *pahoLink) abort() { _ = l.conn.Close() }

func (l *pahoLink) disconnect() { _ = l.cli.Disconnect(&paho.Disconnect{ReasonCode: 0}) }

func (l *pahoLink) done() <-chan struct{} { return l.cli.Done() }
