package hooks

import (
	"context"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/wire"
)

// MaxPendingWindows is how many accepted windows of one client may wait
// to be sent.
const MaxPendingWindows = 8

// busyRetry is the retry-after of a request refused because the client
// has MaxPendingWindows waiting.
const busyRetry = 100 * time.Millisecond

// blocksPerRead is how many blocks a sender reads from the store in one
// read transaction (delivery.Service.Next reads fewer when they are large).
const blocksPerRead = 4

// Blocks serves block requests off the clients' read goroutines and writes
// each window to the requesting client as its socket takes it.
//
// A download used to cost about 0.5 MiB while 64 KiB of blocks were in
// flight (test/bench -only downloads, docs/BENCHMARKS.md). Serving on the
// device's read goroutine ran mochi's publish path nested under the hook,
// which grew every downloading device's goroutine stack to 64 KiB; and each
// block went through mochi's publish path (a topic-tree lookup, a copy of
// the payload per subscriber into the client's outbound queue, then an
// encoding copy): three allocations of the block's size, and a whole window
// copied at once. The garbage kept the GC busy, and what a GC cycle
// allocates counts as live for it, so the heap the GC allowed grew with the
// download rate.
//
// Here a request is checked and rate limited as it arrives, on the
// client's read goroutine (cheap: no store access), and an accepted window
// is written by a sender goroutine of that client, block by block, with
// mochi's WritePacket: one encoding copy per block, nothing queued, and a
// client that stops reading blocks only its own sender (until its
// connection ends). The sender exists while the client has windows to
// send. Blocks go to the requesting client: it must be subscribed to the
// block topic and allowed to read it. A request whose requester is not
// subscribed (a gateway sending requests on one connection and receiving on
// another) is published on the topic through mochi as before.
type Blocks struct {
	mqtt.HookBase
	sender *Sender
	dlv    *delivery.Service
	acl    *ACL
	topics access.Topics
	log    *slog.Logger

	// senders maps a client with windows to send to its *sender.
	senders sync.Map

	// mu guards stopped against senders being started while Stop waits.
	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
}

// sender is one client's windows and the goroutine that sends them.
type sender struct {
	cl *mqtt.Client
	// mu guards jobs and running.
	mu      sync.Mutex
	jobs    []*blockJob // in the order the requests came
	running bool        // a goroutine is sending jobs
}

// blockJob is one accepted window and where its blocks go.
type blockJob struct {
	id, topic string
	w         *delivery.Window
	direct    bool // written to the requesting client; else published on topic
}

// NewBlocks returns the block serving hook; acl decides whether the
// requester may read the block topic. Stop waits for the senders.
func NewBlocks(sender *Sender, dlv *delivery.Service, acl *ACL, t access.Topics, log *slog.Logger) *Blocks {
	if log == nil {
		log = slog.Default()
	}
	return &Blocks{sender: sender, dlv: dlv, acl: acl, topics: t, log: log}
}

// ID implements mqtt.Hook.
func (b *Blocks) ID() string { return "otamq-blocks" }

// Provides implements mqtt.Hook.
func (b *Blocks) Provides(h byte) bool { return h == mqtt.OnDisconnect }

// Stop implements mqtt.Hook: it waits for the senders, which end when
// their windows are sent or their client's connection has closed.
func (b *Blocks) Stop() error {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	b.wg.Wait()
	return nil
}

// OnDisconnect implements mqtt.Hook.
func (b *Blocks) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { b.senders.Delete(cl) }

// Request answers a decoded block request that client cl made for device
// id: it checks it and takes it from the rate limits at once (a refusal is
// published from here), and hands an accepted window to cl's sender.
// maxData caps the data of a block as for delivery.Service.Serve.
func (b *Blocks) Request(cl *mqtt.Client, id string, req wire.BlockRequest, maxData int) {
	topic := b.topics.Device(id, access.KindBlock)
	publish := func(msg []byte) { b.sender.PublishBlock(id, msg) }
	v, ok := b.senders.Load(cl)
	if !ok {
		v, _ = b.senders.LoadOrStore(cl, &sender{cl: cl})
	}
	s := v.(*sender)
	s.mu.Lock()
	full := len(s.jobs) >= MaxPendingWindows
	s.mu.Unlock()
	if full {
		b.dlv.Busy(req, busyRetry, publish)
		return
	}
	w := b.dlv.Begin(id, req, maxData, publish)
	if w == nil {
		return
	}
	_, subscribed := cl.State.Subscriptions.Get(topic)
	job := &blockJob{id: id, topic: topic, w: w, direct: subscribed && b.acl.Allowed(cl.ID, topic, false)}
	s.mu.Lock()
	s.jobs = append(s.jobs, job)
	start := !s.running
	s.running = true
	s.mu.Unlock()
	if start && !b.start(s) {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}
}

// start runs s's goroutine, unless the hook has stopped.
func (b *Blocks) start(s *sender) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.send(s)
	}()
	return true
}

// send writes s's windows, oldest first, until there are none.
func (b *Blocks) send(s *sender) {
	for {
		s.mu.Lock()
		if len(s.jobs) == 0 {
			s.jobs, s.running = nil, false
			s.mu.Unlock()
			return
		}
		j := s.jobs[0]
		s.mu.Unlock()

		// A window published on its topic goes to its subscribers, whether
		// or not the requester (a gateway's short-lived connection, say)
		// is still there; a window written to the requester ends with it.
		b.sendWindow(s.cl, j)

		s.mu.Lock()
		s.jobs[0] = nil
		s.jobs = s.jobs[1:]
		s.mu.Unlock()
	}
}

// sendWindow sends every block of j, reading blocksPerRead at a time.
// Next emits after its read transaction has ended: a write that waits for
// the client never holds the store.
func (b *Blocks) sendWindow(cl *mqtt.Client, j *blockJob) {
	write := func(msg []byte) {
		if j.direct {
			b.sender.WriteBlock(cl, j.id, msg)
		} else {
			b.sender.PublishBlock(j.id, msg)
		}
	}
	for j.w.Left() > 0 && !(j.direct && cl.Closed()) {
		if !b.dlv.Next(context.Background(), j.w, blocksPerRead, write) {
			return
		}
	}
}
