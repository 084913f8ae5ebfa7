package faultproxy

import (
	"math/rand"
	"net"
	"strings"
	"sync"
	"time"
)

// chunk is the most a copy reads and forwards at once.
const chunk = 16 << 10

// Flip says which PUBLISH packets to the client get their last byte
// inverted: every Every-th one whose topic ends with TopicSuffix, at most
// Limit times from SetFlip on (0: no limit). Every 0 turns flipping
// off.
type Flip struct {
	TopicSuffix string
	Every       int
	Limit       int
}

// Stats counts what the proxy did since Start.
type Stats struct {
	Conns    int   // connections accepted (also those closed at once while down)
	Cuts     int   // connections closed by SetCutEvery
	Flips    int   // bytes inverted by SetFlip
	ToClient int64 // bytes handed to clients (counted before the write)
	ToTarget int64 // bytes handed to the target
}

// Proxy forwards loopback TCP connections to one target and injects the
// faults set on it. Its methods may be called concurrently.
type Proxy struct {
	target string
	ln     net.Listener
	done   chan struct{}
	wg     sync.WaitGroup // the accept loop and every connection's copies

	mu         sync.Mutex // guards everything below
	rng        *rand.Rand
	conns      map[*conn]struct{}
	cutEvery   int
	cutGen     int // bumped by SetCutEvery: connections draw a new cut point
	stallUntil time.Time
	delay      time.Duration
	throttle   int
	flip       Flip
	flipSeen   int // PUBLISH packets matching flip.TopicSuffix
	flipped    int // packets flipped under this flip
	down       bool
	closed     bool
	stats      Stats
}

// Start listens on a free loopback port and forwards to target. seed makes
// the proxy's random choices (the cut points) the same on every run.
func Start(target string, seed int64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, done: make(chan struct{}),
		rng: rand.New(rand.NewSource(seed)), conns: map[*conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients connect to ("127.0.0.1:port").
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops the listener, closes every connection and waits until all of
// the proxy's goroutines have returned. It may be called more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	err := p.ln.Close()
	for c := range p.conns {
		c.close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// SetCutEvery makes every connection close after about n bytes to the
// client (counted from now for open ones); 0 turns cutting off.
func (p *Proxy) SetCutEvery(n int) {
	p.mu.Lock()
	p.cutEvery = n
	p.cutGen++
	p.mu.Unlock()
}

// Stall holds all traffic, on every connection, for d from now.
func (p *Proxy) Stall(d time.Duration) {
	p.mu.Lock()
	p.stallUntil = time.Now().Add(d)
	p.mu.Unlock()
}

// SetDelay makes every chunk wait d before it is forwarded; 0 turns it off.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetThrottle limits each connection to bytesPerSec bytes per second to the
// client; 0 turns it off.
func (p *Proxy) SetThrottle(bytesPerSec int) {
	p.mu.Lock()
	p.throttle = bytesPerSec
	p.mu.Unlock()
}

// SetFlip sets which PUBLISH packets to the client are corrupted; the
// count of matching packets starts again from 0.
func (p *Proxy) SetFlip(f Flip) {
	p.mu.Lock()
	p.flip = f
	p.flipSeen = 0
	p.flipped = 0
	p.mu.Unlock()
}

// SetDown(true) closes every connection and refuses new ones (accepts and
// closes them at once) until SetDown(false).
func (p *Proxy) SetDown(down bool) {
	p.mu.Lock()
	p.down = down
	if down {
		for c := range p.conns {
			c.close()
		}
	}
	p.mu.Unlock()
}

// CutAll closes the connections open now, like a link that broke.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	for c := range p.conns {
		c.close()
	}
	p.mu.Unlock()
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.mu.Lock()
		p.stats.Conns++
		if p.down || p.closed {
			p.mu.Unlock()
			_ = nc.Close()
			continue
		}
		p.mu.Unlock()
		tc, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = nc.Close()
			continue
		}
		c := &conn{p: p, client: nc, target: tc}
		p.mu.Lock()
		if p.down || p.closed {
			p.mu.Unlock()
			c.close()
			continue
		}
		p.conns[c] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go c.up()
		go c.downstream()
	}
}

// conn is one client connection and its connection to the target.
type conn struct {
	p              *Proxy
	client, target net.Conn
	once           sync.Once

	// downstream's own (only its goroutine touches them)
	sent   int64 // bytes to the client
	cutAt  int64 // close when sent reaches it; 0: no cut
	cutGen int
	fr     framer
}

func (c *conn) close() {
	c.once.Do(func() {
		_ = c.client.Close()
		_ = c.target.Close()
	})
}

func (c *conn) finish() {
	c.close()
	c.p.mu.Lock()
	delete(c.p.conns, c)
	c.p.mu.Unlock()
	c.p.wg.Done()
}

// wait sleeps for d, or until the proxy closes (false).
func (p *Proxy) wait(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.done:
		return false
	}
}

// unstalled waits out a stall.
func (p *Proxy) unstalled() bool {
	for {
		p.mu.Lock()
		stall := time.Until(p.stallUntil)
		p.mu.Unlock()
		if stall <= 0 {
			return true
		}
		if !p.wait(stall) {
			return false
		}
	}
}

// hold waits out a stall and the delay before a chunk is forwarded.
func (p *Proxy) hold() bool {
	p.mu.Lock()
	delay := p.delay
	p.mu.Unlock()
	return p.unstalled() && p.wait(delay) && p.unstalled()
}

// up copies client to target.
func (c *conn) up() {
	defer c.finish()
	buf := make([]byte, chunk)
	for {
		n, err := c.client.Read(buf)
		if n > 0 {
			if !c.p.hold() {
				return
			}
			c.p.mu.Lock()
			c.p.stats.ToTarget += int64(n)
			c.p.mu.Unlock()
			if _, werr := c.target.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// downstream copies target to client, where the faults act.
func (c *conn) downstream() {
	defer c.finish()
	buf := make([]byte, chunk)
	for {
		n, err := c.target.Read(buf)
		if n > 0 && !c.forward(buf[:n]) {
			return
		}
		if err != nil {
			return
		}
	}
}

// forward sends b to the client with the faults applied; false when the
// connection is to end.
func (c *conn) forward(b []byte) bool {
	if !c.p.hold() {
		return false
	}
	p := c.p
	p.mu.Lock()
	if p.cutGen != c.cutGen {
		c.cutGen = p.cutGen
		c.cutAt = 0
		if n := int64(p.cutEvery); n > 0 {
			c.cutAt = c.sent + max(n*3/4, 1) + p.rng.Int63n(max(n/2, 1))
		}
	}
	cut := false
	if c.cutAt > 0 && c.sent+int64(len(b)) >= c.cutAt {
		b = b[:c.cutAt-c.sent]
		cut = true
	}
	c.fr.scan(b, p)
	rate := p.throttle
	p.mu.Unlock()

	for first := true; len(b) > 0; first = false {
		if !first && !p.unstalled() {
			return false
		}
		n := len(b)
		if rate > 0 && n > rate/10+1 {
			n = rate/10 + 1 // about ten writes a second
		}
		p.mu.Lock() // counted first: the client may read them at once
		c.sent += int64(n)
		p.stats.ToClient += int64(n)
		p.mu.Unlock()
		if _, err := c.client.Write(b[:n]); err != nil {
			return false
		}
		b = b[n:]
		if rate > 0 && !p.wait(time.Duration(n)*time.Second/time.Duration(rate)) {
			return false
		}
	}
	if cut {
		p.mu.Lock()
		p.stats.Cuts++
		p.mu.Unlock()
		return false
	}
	return true
}

// framer follows MQTT packets in the target-to-client stream by their
// fixed header (type byte, remaining length) and, for PUBLISH, the topic.
type framer struct {
	state  int    // what the next byte is: 0 type, 1 length, 2 body
	typ    byte   // packet type byte
	mult   int    // remaining-length varint multiplier
	left   int    // bytes of the body still to come
	head   []byte // the body's first bytes, up to the end of the topic
	topic  bool   // the topic was read
	target bool   // this packet's last byte is to be inverted
}

// scan goes through b in place, inverting the last byte of the PUBLISH
// packets the proxy's Flip selects. Called with p.mu held.
func (f *framer) scan(b []byte, p *Proxy) {
	for i := 0; i < len(b); i++ {
		switch f.state {
		case 0:
			f.typ, f.mult, f.left, f.head, f.topic, f.target = b[i], 1, 0, f.head[:0], false, false
			f.state = 1
		case 1:
			f.left += int(b[i]&0x7f) * f.mult
			f.mult *= 128
			if b[i]&0x80 == 0 || f.mult > 128*128*128 {
				f.state = 2
				if f.left == 0 {
					f.state = 0
				}
			}
		case 2:
			if f.typ>>4 == 3 && !f.topic {
				f.head = append(f.head, b[i])
				if len(f.head) >= 2 && len(f.head) == 2+(int(f.head[0])<<8|int(f.head[1])) {
					f.topic = true
					f.target = p.selects(string(f.head[2:]))
				}
			}
			f.left--
			if f.left == 0 {
				if f.target {
					b[i] ^= 0xff
					p.stats.Flips++
				}
				f.state = 0
			}
		}
	}
}

// selects counts a PUBLISH on topic and says whether to flip it. Called
// with p.mu held.
func (p *Proxy) selects(topic string) bool {
	f := p.flip
	if f.Every <= 0 || !strings.HasSuffix(topic, f.TopicSuffix) {
		return false
	}
	p.flipSeen++
	if p.flipSeen%f.Every != 0 {
		return false
	}
	if f.Limit > 0 && p.flipped >= f.Limit {
		return false
	}
	p.flipped++
	return true
}
