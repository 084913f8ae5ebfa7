package sim

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// link311 is an MQTT 3.1.1 connection. paho.golang speaks only MQTT 5, so
// this small client encodes and decodes with mochi's packet codec (a
// dependency of the broker already): one reader goroutine, writes under a
// mutex, keepalive pings from a timer.
type link311 struct {
	conn      net.Conn
	h         linkHandler
	keepAlive time.Duration
	timeout   time.Duration
	doneCh    chan struct{}

	wmu  sync.Mutex  // guards writes to conn
	ping *time.Timer // sends the keepalive pings

	mu      sync.Mutex // guards nextID, subacks, closed
	nextID  uint16
	subacks map[uint16]chan byte
	closed  bool
}

// maxPacket311 bounds what the v3.1.1 client reads: v3.1.1 has no Maximum
// Packet Size to tell the broker, so blocks come as large as asked.
const maxPacket311 = 1 << 20

// dial311 connects over MQTT 3.1.1.
func dial311(ctx context.Context, c dialConfig, h linkHandler) (link, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	l := &link311{conn: conn, h: h, keepAlive: time.Duration(c.keepAlive) * time.Second, timeout: c.timeout,
		doneCh: make(chan struct{}), subacks: map[uint16]chan byte{}}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: c.keepAlive,
			ClientIdentifier: c.id, UsernameFlag: true, Username: []byte(c.id),
			PasswordFlag: c.token != "", Password: []byte(c.token)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		_ = conn.Close()
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	r := bufio.NewReaderSize(conn, 512)
	if _, err := conn.Write(buf.Bytes()); err != nil {
		_ = conn.Close()
		return nil, err
	}
	ca, err := readPacket(r)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("waiting for CONNACK: %w", err)
	}
	if ca.FixedHeader.Type != packets.Connack {
		_ = conn.Close()
		return nil, fmt.Errorf("got packet type %d instead of CONNACK", ca.FixedHeader.Type)
	}
	if ca.ReasonCode != 0 {
		_ = conn.Close()
		return nil, fmt.Errorf("%w: CONNACK return code %d", ErrRefused, ca.ReasonCode)
	}
	_ = conn.SetDeadline(time.Time{})
	if l.keepAlive > 0 {
		l.ping = time.AfterFunc(l.keepAlive, l.sendPing)
	}
	go l.read(r)
	return l, nil
}

// readPacket reads one packet (v3.1.1) from r.
func readPacket(r *bufio.Reader) (packets.Packet, error) {
	var pk packets.Packet
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	if n > maxPacket311 {
		return pk, fmt.Errorf("a packet of %d bytes, more than %d", n, maxPacket311)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = 4
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	}
	return pk, err
}

func (l *link311) read(r *bufio.Reader) {
	var err error
	defer func() {
		l.close()
		l.h.lost(err)
		close(l.doneCh)
	}()
	for {
		if l.keepAlive > 0 {
			_ = l.conn.SetReadDeadline(time.Now().Add(l.keepAlive * 3 / 2))
		}
		var pk packets.Packet
		if pk, err = readPacket(r); err != nil {
			return
		}
		switch pk.FixedHeader.Type {
		case packets.Publish:
			if pk.FixedHeader.Qos > 0 {
				ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ProtocolVersion: 4}
				if err = l.write(func(b *bytes.Buffer) error { return ack.PubackEncode(b) }); err != nil {
					return
				}
			}
			l.h.message(pk.TopicName, pk.Payload)
		case packets.Puback:
			l.h.puback(pk.PacketID, 0) // no reason code in MQTT 3.1.1
		case packets.Suback:
			l.mu.Lock()
			ch := l.subacks[pk.PacketID]
			delete(l.subacks, pk.PacketID)
			l.mu.Unlock()
			if ch != nil {
				code := byte(0x80)
				if len(pk.ReasonCodes) > 0 {
					code = pk.ReasonCodes[0]
				}
				ch <- code
			}
		}
	}
}

func (l *link311) write(encode func(*bytes.Buffer) error) error {
	var buf bytes.Buffer
	if err := encode(&buf); err != nil {
		return err
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	_ = l.conn.SetWriteDeadline(time.Now().Add(l.timeout))
	_, err := l.conn.Write(buf.Bytes())
	return err
}

// sendPing sends a PINGREQ every keepalive, whatever else was sent: the
// PINGRESP is what keeps the reader's deadline from passing on a
// connection the broker sends nothing else on.
func (l *link311) sendPing() {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	if err := l.write(func(b *bytes.Buffer) error { return pk.PingreqEncode(b) }); err != nil {
		l.abort()
		return
	}
	l.ping.Reset(l.keepAlive)
}

func (l *link311) id() uint16 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nextID++
	if l.nextID == 0 {
		l.nextID = 1
	}
	return l.nextID
}

func (l *link311) publish(topic string, payload []byte, qos byte) (uint16, error) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic,
		Payload: payload, ProtocolVersion: 4}
	if qos > 0 {
		pk.PacketID = l.id()
	}
	return pk.PacketID, l.write(func(b *bytes.Buffer) error { return pk.PublishEncode(b) })
}

func (l *link311) subscribe(ctx context.Context, filter string, qos byte) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: l.id(),
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}, ProtocolVersion: 4}
	ch := make(chan byte, 1)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return net.ErrClosed
	}
	l.subacks[pk.PacketID] = ch
	l.mu.Unlock()
	if err := l.write(func(b *bytes.Buffer) error { return pk.SubscribeEncode(b) }); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	select {
	case code := <-ch:
		if code >= 0x80 {
			return fmt.Errorf("%w: %s: return code 0x%02x", errSubRefused, filter, code)
		}
		return nil
	case <-l.doneCh:
		return net.ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("waiting for SUBACK: %w", ctx.Err())
	}
}

// close stops the pings and closes the socket.
func (l *link311) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	if l.ping != nil {
		l.ping.Stop()
	}
	_ = l.conn.Close()
}

func (l *link311) abort() { l.close() }

func (l *link311) disconnect() {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4}
	_ = l.write(func(b *bytes.Buffer) error { return pk.DisconnectEncode(b) }) // closing anyway
	l.close()
	<-l.doneCh
}

func (l *link311) done() <-chan struct{} { return l.doneCh }
