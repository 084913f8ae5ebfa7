package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The load generators speak MQTT with pre-encoded packets over raw TCP, so
// the client side costs as little as possible and the server is what is
// measured.

func encode(pk packets.Packet) []byte {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	default:
		err = fmt.Errorf("cannot encode type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func connectPacket(id, user, pass string) []byte {
	return encode(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 0, ClientIdentifier: id,
			UsernameFlag: user != "", Username: []byte(user), PasswordFlag: pass != "", Password: []byte(pass)},
	})
}

func subscribePacket(filter string) []byte {
	return encode(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: filter, Qos: 1}},
	})
}

func publishPacket(topic string, payload []byte) []byte {
	return encode(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish},
		ProtocolVersion: 4,
		TopicName:       topic,
		Payload:         payload,
	})
}

// readPacket reads one packet and returns its type and body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	var n, mul int = 0, 1
	for i := 0; i < 4; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		mul *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return h >> 4, body, nil
}

// dial connects and authenticates; with a filter it also subscribes and
// waits for the SUBACK.
func dial(addr, id, user, pass, filter string) (net.Conn, error) {
	return dialWith(net.Dialer{Timeout: 30 * time.Second}, addr, id, user, pass, filter)
}

// dialWith is dial with a dialer of the caller's.
func dialWith(d net.Dialer, addr, id, user, pass, filter string) (net.Conn, error) {
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReaderSize(conn, 64)
	msg := connectPacket(id, user, pass)
	if filter != "" {
		msg = append(msg, subscribePacket(filter)...)
	}
	if _, err := conn.Write(msg); err != nil {
		conn.Close()
		return nil, err
	}
	typ, body, err := readPacket(r)
	if err != nil || typ != packets.Connack || len(body) < 2 || body[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("connect %s: type %d body %x: %v", id, typ, body, err)
	}
	if filter != "" {
		typ, body, err = readPacket(r)
		if err != nil || typ != packets.Suback || len(body) < 3 || body[2] >= 0x80 {
			conn.Close()
			return nil, fmt.Errorf("subscribe %s %s: type %d body %x: %v", id, filter, typ, body, err)
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}
