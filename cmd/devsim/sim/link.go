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
	// publish sends a message and returns its packet identifier (QoS 1).
	// It does not wait for the PUBACK (the agent hands a message to its
	// MQTT library and goes on; the PUBACK comes to linkHandler.puback).
	// It may be called with the device's mutex held: it only writes to the
	// socket.
	publish(topic string, payload []byte, qos byte) (uint16, error)
	// subscribe subscribes to one filter and waits for the SUBACK. Never
	// called with the device's mutex held.
	subscribe(ctx context.Context, filter string, qos byte) error
	// abort closes the socket without a DISCONNECT: the device lost power
	// or its process ended. It does not block.
	abort()
	// disconnect sends a DISCONNECT and closes; it waits for the client's
	// goroutines, so it is never called with the device's mutex held.
	disconnect()
	// done is closed when every goroutine of the link has ended.
	done() <-chan struct{}
}

// linkHandler receives what a link reads. The functions are called from
// the link's goroutines, never with a lock of the link held; lost may be
// called more than once, also after abort or disconnect.
type linkHandler struct {
	message func(topic string, payload []byte)
	// puback: the PUBACK of a QoS 1 publish, with its reason code (0 on
	// MQTT 3.1.1).
	puback func(id uint16, code byte)
	lost   func(err error)
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
	l := &pahoLink{conn: conn, timeout: c.timeout, sess: &pubackSession{SessionManager: state.NewInMemory(), puback: h.puback}}
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
	sess    *pubackSession
}

// pubackSession is paho's in-memory session that also tells the packet
// identifier of each PUBLISH it takes and the reason code of each PUBACK:
// paho's asynchronous publish reports neither.
type pubackSession struct {
	session.SessionManager
	puback func(id uint16, code byte)

	mu     sync.Mutex // guards lastID
	lastID uint16
}

func (s *pubackSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	err := s.SessionManager.AddToSession(ctx, p, resp)
	if pb, ok := p.(*packets.Publish); ok && err == nil {
		s.mu.Lock()
		s.lastID = pb.PacketID
		s.mu.Unlock()
	}
	return err
}

func (s *pubackSession) PacketReceived(recv *packets.ControlPacket, pubs chan<- *packets.Publish) error {
	err := s.SessionManager.PacketReceived(recv, pubs)
	if pa, ok := recv.Content.(*packets.Puback); ok {
		s.puback(pa.PacketID, pa.ReasonCode)
	}
	return err
}

func (l *pahoLink) publish(topic string, payload []byte, qos byte) (uint16, error) {
	p := &paho.Publish{Topic: topic, QoS: qos, Payload: payload}
	if qos == 0 {
		_, err := l.cli.Publish(context.Background(), p)
		return 0, err
	}
	// AsyncSend only waits for a packet identifier, which is there unless
	// the broker's Receive Maximum of unacknowledged messages is reached.
	// The device's publishes are serialised by its mutex, so lastID is this
	// one's.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := l.cli.PublishWithOptions(ctx, p, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend}); err != nil {
		return 0, err
	}
	l.sess.mu.Lock()
	defer l.sess.mu.Unlock()
	return l.sess.lastID, nil
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
