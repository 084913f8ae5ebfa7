package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Raw MQTT 3.1.1 helpers for the block benchmark: a packet reader that
// reuses one buffer, and a PUBLISH header appended in place, so the clients
// spend as little as possible per block and the broker is what is measured.

// rawConn is a connection with its buffered reader and reusable buffers.
type rawConn struct {
	c   net.Conn
	r   *bufio.Reader
	in  []byte // body of the last packet read
	out []byte // packets being assembled for one write
}

func newRawConn(c net.Conn) *rawConn {
	return &rawConn{c: c, r: bufio.NewReaderSize(c, 64*1024)}
}

// next reads one packet and returns its first byte and its body, which is
// valid until the next call.
func (rc *rawConn) next() (byte, []byte, error) {
	h, err := rc.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := rc.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, fmt.Errorf("malformed remaining length")
		}
		mul *= 128
	}
	if cap(rc.in) < n {
		rc.in = make([]byte, n)
	}
	rc.in = rc.in[:n]
	if _, err := io.ReadFull(rc.r, rc.in); err != nil {
		return 0, nil, err
	}
	return h, rc.in, nil
}

// nextPublish reads packets until a PUBLISH and returns its topic and
// payload (valid until the next call).
func (rc *rawConn) nextPublish() (topic, payload []byte, err error) {
	for {
		h, body, err := rc.next()
		if err != nil {
			return nil, nil, err
		}
		if h>>4 != packets.Publish {
			continue
		}
		if len(body) < 2 {
			return nil, nil, fmt.Errorf("short PUBLISH")
		}
		tl := int(body[0])<<8 | int(body[1])
		p := 2 + tl
		if (h>>1)&3 > 0 {
			p += 2 // packet identifier
		}
		if p > len(body) {
			return nil, nil, fmt.Errorf("malformed PUBLISH")
		}
		return body[2 : 2+tl], body[p:], nil
	}
}

// appendPublishHeader appends the fixed header and topic of a QoS 0
// PUBLISH whose payload of payloadLen bytes the caller appends next.
func appendPublishHeader(dst []byte, topic string, payloadLen int) []byte {
	rem := 2 + len(topic) + payloadLen
	dst = append(dst, packets.Publish<<4)
	for {
		b := byte(rem & 0x7f)
		rem >>= 7
		if rem > 0 {
			b |= 0x80
		}
		dst = append(dst, b)
		if rem == 0 {
			break
		}
	}
	dst = append(dst, byte(len(topic)>>8), byte(len(topic)))
	return append(dst, topic...)
}

// subscribeMany subscribes an already connected client to filters, one
// SUBSCRIBE per filter, and waits for every SUBACK.
func subscribeMany(rc *rawConn, filters []string) error {
	var msg []byte
	for i, f := range filters {
		msg = append(msg, encode(packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
			ProtocolVersion: 4,
			PacketID:        uint16(i + 1),
			Filters:         packets.Subscriptions{{Filter: f, Qos: 0}},
		})...)
	}
	_ = rc.c.SetDeadline(time.Now().Add(60 * time.Second))
	defer func() { _ = rc.c.SetDeadline(time.Time{}) }()
	if _, err := rc.c.Write(msg); err != nil {
		return err
	}
	for range filters {
		h, body, err := rc.next()
		if err != nil {
			return err
		}
		if h>>4 != packets.Suback || len(body) < 3 || body[2] >= 0x80 {
			return fmt.Errorf("subscribe refused: packet %x body %x", h, body)
		}
	}
	return nil
}
