package test

import (
	"context"
	be "encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/wire"
	"github.com/otamq/otamq/test/faultproxy"
)

// Gateways with real processes: otamq-gateway (agent-c: the agent's
// simulated device plus a relay with a cache) connected to the broker, and
// children that are otamq-agent processes on a local link (a UNIX socket,
// docs/PROTOCOL.md "Local links"), so every byte a child gets went through
// the link framing and the gateway's cache.

var gatewayBuild struct {
	once sync.Once
	path string
	err  error
}

// gatewayBinary builds agent-c's otamq-gateway once per test run, beside
// otamq-agent.
func gatewayBinary(t testing.TB) string {
	t.Helper()
	agentBinary(t)
	gatewayBuild.once.Do(func() {
		dir := filepath.Join(binDir, "agent-c")
		gatewayBuild.path = filepath.Join(dir, "otamq-gateway")
		cmd := exec.Command("make", "-C", filepath.Join(repoRoot(), "agent-c"), "B="+dir, gatewayBuild.path)
		if out, err := cmd.CombinedOutput(); err != nil {
			gatewayBuild.err = fmt.Errorf("make -C agent-c otamq-gateway: %v\n%s", err, out)
		}
	})
	if gatewayBuild.err != nil {
		t.Fatal(gatewayBuild.err)
	}
	return gatewayBuild.path
}

// startProc runs a supervised agent-c process (otamq-agent or
// otamq-gateway) with args; it is stopped at the end of the test.
func startAgentC(t testing.TB, bin string, args []string) *agentProc {
	t.Helper()
	a := &agentProc{t: t, cmd: exec.Command(bin, args...), out: &syncBuffer{}}
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	return a
}

// shortDir is a temporary directory with a short path: a UNIX socket's
// path has at most 107 bytes.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "gw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// gateway registers gateway id and starts otamq-gateway for it (supervised,
// factory image 1.0.0) listening on sock, with url as its broker.
func (w *agentWorld) gateway(t testing.TB, id, url, sock string, flags ...string) *agentProc {
	t.Helper()
	tok := w.register(id, "gateway", "", map[string]any{"hardware": "esp32-v2"})
	dir := t.TempDir()
	args := []string{"--broker", url, "--id", id, "--token", tok, "--data-dir", dir,
		"--key", w.keyFile, "--initial-version", "1.0.0", "--supervise", "--verbose",
		"--listen", "unix:" + sock, "--cache-dir", filepath.Join(dir, "cache")}
	args = append(args, agentTiming...)
	a := startAgentC(t, gatewayBinary(t), append(args, flags...))
	a.dir = dir
	return a
}

// child registers id as a child of gw and starts otamq-agent for it on
// the local link at sock.
func (w *agentWorld) child(t testing.TB, id, gw, sock string, flags ...string) *agentProc {
	t.Helper()
	w.register(id, "device", gw, map[string]any{"hardware": "esp32-v2"})
	dir := t.TempDir()
	args := []string{"--link", "unix:" + sock, "--id", id, "--data-dir", dir,
		"--key", w.keyFile, "--initial-version", "1.0.0", "--supervise", "--verbose"}
	args = append(args, agentTiming...)
	a := startAgentC(t, agentBinary(t), append(args, flags...))
	a.dir = dir
	return a
}

// waitReported waits until every device reported firmware fw in state st
// (st "" for any).
func (w *agentWorld) waitReported(t testing.TB, within time.Duration, ids []string, fw, st string) {
	t.Helper()
	eventually(t, within, func() error {
		for _, id := range ids {
			s := w.status(id)
			if s.Firmware != fw || (st != "" && s.OTAState != st) {
				return fmt.Errorf("%s: firmware %q, state %q (want %s %s)", id, s.Firmware, s.OTAState, fw, st)
			}
		}
		return nil
	})
}

// startRollout creates and starts a rollout of release rel to devices in
// one wave.
func (w *agentWorld) startRollout(t testing.TB, id, rel string, devices []string) {
	t.Helper()
	spec := fmt.Sprintf("id: %s\nrelease: %s\nselector: {devices: [%s]}\nwaves:\n  - {percent: [100]}\nprobation: 2s\n",
		id, rel, strings.Join(devices, ", "))
	ctx := context.Background()
	if err := w.admin().Call(ctx, "rollout/create", map[string]any{"yaml": spec}, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.admin().Call(ctx, "rollout/start", map[string]any{"id": id}, nil); err != nil {
		t.Fatal(err)
	}
}

func (w *agentWorld) blockBytes(t testing.TB) int {
	t.Helper()
	v, err := w.metric("otamq_block_bytes_total")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func childIDs(prefix string, n int) []string {
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprintf("%s%d", prefix, i))
	}
	return ids
}

// A gateway with 5 children through a real rollout: every child downloads
// from the gateway's cache, installs, reboots and commits, and the broker
// served the image's bytes once, to the gateway, not once per child.
func TestGatewayRollout(t *testing.T) {
	gatewayBinary(t)
	t.Parallel()
	w := newAgentWorld(t)
	sock := filepath.Join(shortDir(t), "gw.sock")
	gw := w.gateway(t, "gw-1", w.url(), sock)
	kids := childIDs("kid-", 5)
	for _, id := range kids {
		w.child(t, id, "gw-1", sock)
	}
	w.waitReported(t, 30*time.Second, append([]string{"gw-1"}, kids...), "1.0.0", "")
	for _, id := range kids {
		if st := w.status(id); st.Link != "via_gateway" {
			t.Errorf("%s reports connectivity %q, want via_gateway", id, st.Link)
		}
	}
	before := w.blockBytes(t)

	const size = 96 * 1024
	fw := simFirmware(t, w.key, "1.1.0", simHealthy, size)
	rel := w.release(fw)
	w.startRollout(t, "r-gw", rel.ID, kids)
	w.waitReported(t, 90*time.Second, kids, "1.1.0", "committed")
	for _, id := range kids {
		if err := hasEvents(w.timeline(id), "r-gw", "update.download.started", "update.download.completed",
			"update.reboot.completed", "update.health.ok"); err != nil {
			t.Error(err)
		}
	}
	if got := w.blockBytes(t) - before; got != size {
		t.Errorf("the broker served %d block bytes for a %d-byte image and 5 children (want one image: %d)", got, size, size)
	}
	if n := len(w.gets.requests("gw-1")); n == 0 {
		t.Errorf("the gateway made no block requests of its own")
	}
	if !strings.Contains(gw.out.String(), "complete, 98304 bytes") {
		t.Errorf("the gateway's log does not show the cached image complete")
	}
	w.noRefusals()
}

// linkRelay sits on a local link between a child and its gateway (UNIX
// sockets) and damages what it carries, reproducibly (seeded): with
// probability 1/downEvery per byte to the child and 1/upEvery per byte to
// the gateway it flips a bit, drops the byte or sends it twice. It also
// corrupts the data of up to forge blocks, each the first block answering
// a block request of the child that starts at 8192 or later (a block the
// child takes), and recomputes their frames' CRC: a corruption the framing
// cannot see, which only the image digest catches. At most 3: the times
// the agent fetches an image again after a digest mismatch.
type linkRelay struct {
	ln                 net.Listener
	target             string
	downEvery, upEvery int
	forge              int
	mu                 sync.Mutex // guards rng, the counts and conns
	rng                *rand.Rand
	flips, drops, dups int
	forged             int
	lastReq            uint32 // the child's last block request: its ID
	lastOff            uint64 // and offset
	conns              []net.Conn
	wg                 sync.WaitGroup
}

func startLinkRelay(t testing.TB, sock, target string, downEvery, upEvery, forge int) *linkRelay {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	r := &linkRelay{ln: ln, target: target, downEvery: downEvery, upEvery: upEvery, forge: forge,
		rng: rand.New(rand.NewSource(11))}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *linkRelay) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *linkRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		g, err := net.Dial("unix", r.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, c, g)
		r.mu.Unlock()
		r.wg.Add(2)
		go r.copy(g, c, r.upEvery, false)
		go r.copy(c, g, r.downEvery, true)
	}
}

// copy forwards src to dst, damaged; down is the direction to the child.
func (r *linkRelay) copy(dst, src net.Conn, every int, down bool) {
	defer r.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 8192)
	var pending []byte // down: bytes not yet framed
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		var out []byte
		if !down {
			// note the child's block requests (the stream from the child
			// is clean here; a frame split over reads is just not seen)
			for p := buf[:n]; len(p) >= 12; {
				total := 12 + (int(p[5])<<8 | int(p[6]))
				if p[0] != 0xa5 || len(p) < total {
					break
				}
				if q, err := wire.DecodeBlockRequest(p[8 : total-4]); err == nil && p[2] == 0x05 {
					r.mu.Lock()
					r.lastReq, r.lastOff = q.RequestID, q.Offset
					r.mu.Unlock()
				}
				p = p[total:]
			}
			out = r.mangle(nil, buf[:n], every)
		} else {
			// the gateway's stream is clean: frame it, forge one block
			// (and leave that one otherwise intact), damage the rest
			pending = append(pending, buf[:n]...)
			for len(pending) >= 8 {
				total := 12 + (int(pending[5])<<8 | int(pending[6]))
				if len(pending) < total {
					break
				}
				f := append([]byte(nil), pending[:total]...)
				pending = pending[total:]
				forged := false
				if b, _, err := wire.DecodeBlock(f[8:total-4], 1<<20); err == nil && b != nil && b.Offset >= 8192 {
					r.mu.Lock()
					if r.forged < r.forge && b.RequestID == r.lastReq && b.Offset == r.lastOff {
						f[total-5] ^= 0x5a // the block's last data byte
						be.BigEndian.PutUint32(f[total-4:], crc32.ChecksumIEEE(f[2:total-4]))
						r.forged++
						forged = true
					}
					r.mu.Unlock()
				}
				if forged {
					out = append(out, f...)
				} else {
					out = r.mangle(out, f, every)
				}
			}
		}
		if _, err := dst.Write(out); err != nil {
			return
		}
	}
}

// mangle appends in to out with the relay's random damage.
func (r *linkRelay) mangle(out, in []byte, every int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range in {
		if every > 0 && r.rng.Intn(every) == 0 {
			switch r.rng.Intn(3) {
			case 0:
				out = append(out, b^byte(1<<r.rng.Intn(8)))
				r.flips++
			case 1:
				r.drops++
			default:
				out = append(out, b, b)
				r.dups++
			}
			continue
		}
		out = append(out, b)
	}
	return out
}

func (r *linkRelay) damage() (flips, drops, dups, forged int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flips, r.drops, r.dups, r.forged
}

// A child on a damaged link: bytes flipped, dropped and duplicated in both
// directions, and one block corrupted with a correct CRC. The child's
// decoder resynchronises (its log says so), the forged block is caught by
// the image digest (the agent fetches the image again, "refetching"), and
// the child commits the update.
func TestGatewayDamagedLink(t *testing.T) {
	gatewayBinary(t)
	t.Parallel()
	w := newAgentWorld(t)
	dir := shortDir(t)
	sock, bad := filepath.Join(dir, "gw.sock"), filepath.Join(dir, "bad.sock")
	w.gateway(t, "gw-d", w.url(), sock)
	eventually(t, 20*time.Second, func() error { _, err := os.Stat(sock); return err })
	relay := startLinkRelay(t, bad, sock, 10000, 400, 1)
	kid := w.child(t, "kid-d", "gw-d", bad)
	w.waitReported(t, 60*time.Second, []string{"kid-d"}, "1.0.0", "")

	w.startRollout(t, "r-bad", w.release(simFirmware(t, w.key, "1.1.0", simHealthy, 40*1024)).ID, []string{"kid-d"})
	w.waitReported(t, 180*time.Second, []string{"kid-d"}, "1.1.0", "committed")
	flips, drops, dups, forged := relay.damage()
	if forged == 0 || flips == 0 || drops == 0 || dups == 0 {
		t.Fatalf("the relay damaged nothing: %d flips, %d drops, %d duplicates, %d forged", flips, drops, dups, forged)
	}
	if !strings.Contains(kid.out.String(), "resynchronised:") {
		t.Errorf("the child's log shows no resynchronisation")
	}
	refetched := false
	for _, e := range w.timeline("kid-d") {
		refetched = refetched || (e.Type == "update.download.started" && e.Detail == "refetching")
	}
	if !refetched {
		t.Errorf("the forged block was not caught by the digest (no refetch in the timeline): %+v", w.timeline("kid-d"))
	}
	t.Logf("link damage: %d flips, %d drops, %d duplicates, %d blocks forged", flips, drops, dups, forged)
}

// partSize is the size of the gateway's partial cache file of digest, or
// -1 (none); complete reports whether the verified image is there.
func cacheFile(gw *agentProc, digest [32]byte) (part int64, complete bool) {
	base := filepath.Join(gw.dir, "cache", fmt.Sprintf("%x", digest[:]))
	if _, err := os.Stat(base + ".img"); err == nil {
		return 0, true
	}
	if st, err := os.Stat(base + ".part"); err == nil {
		return st.Size(), false
	}
	return -1, false
}

// The gateway's process killed in the middle of its fetch (a power loss:
// its supervisor starts it again) continues the fetch where its cache file
// ends; then the broker becomes unreachable while the children download:
// they take everything the cache holds (their slot files grow up to it)
// and wait. The gateway restarts again while the broker is away: it
// welcomes the children it knows without asking the broker, and their
// births overflow its queue (--queue 2). Once the broker is back the
// gateway fetches the rest, every child commits, and the events the
// children sent while the broker was away reach it. The
// broker served the image about once (what was in flight at the kill may
// come twice), not once per child.
func TestGatewayFaults(t *testing.T) {
	gatewayBinary(t)
	t.Parallel()
	w := newAgentWorld(t)
	p, err := faultproxy.Start(w.Addr(), 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	sock := filepath.Join(shortDir(t), "gw.sock")
	gw := w.gateway(t, "gw-f", "mqtt://"+p.Addr(), sock, "--queue", "2")
	kids := childIDs("kid-f", 3)
	procs := map[string]*agentProc{}
	for _, id := range kids {
		procs[id] = w.child(t, id, "gw-f", sock)
	}
	w.waitReported(t, 30*time.Second, append([]string{"gw-f"}, kids...), "1.0.0", "")
	before := w.blockBytes(t)

	const size = 192 * 1024
	fw := simFirmware(t, w.key, "1.1.0", simHealthy, size)
	p.SetThrottle(32 * 1024) // the gateway's fetch takes seconds
	w.startRollout(t, "r-f", w.release(fw).ID, kids)
	var cut int64
	eventually(t, 60*time.Second, func() error {
		if cut, _ = cacheFile(gw, fw.m.ImageDigest); cut < 32*1024 {
			return fmt.Errorf("the gateway has cached %d bytes", cut)
		}
		return nil
	})
	gw.powerLoss()
	var cached int64
	eventually(t, 60*time.Second, func() error {
		n, done := cacheFile(gw, fw.m.ImageDigest)
		if done || (n >= 0 && n < cut) {
			t.Fatalf("after the restart the cache file has %d bytes (complete %v), %d before the kill", n, done, cut)
		}
		if n < cut+16*1024 {
			return fmt.Errorf("cached %d bytes, %d before the kill", n, cut)
		}
		cached = n
		return nil
	})

	// The broker becomes unreachable in the middle of the fetch: the
	// children download what the cache holds.
	p.SetDown(true)
	if n, _ := cacheFile(gw, fw.m.ImageDigest); n > cached {
		cached = n
	}
	eventually(t, 60*time.Second, func() error {
		for id, a := range procs {
			st, err := os.Stat(filepath.Join(a.dir, "slot1.part"))
			if err != nil || st.Size() < cached-4*4096 {
				return fmt.Errorf("%s has not downloaded the %d bytes the gateway holds (%v)", id, cached, err)
			}
		}
		return nil
	})
	// the gateway restarts while the broker is away: it welcomes the
	// children it knows without asking, and their births (3) overflow its
	// queue (2)
	gw.powerLoss()
	eventually(t, 60*time.Second, func() error {
		if n := strings.Count(gw.out.String(), "relaying (broker unreachable; accepted before)"); n < len(kids) {
			return fmt.Errorf("%d children welcomed by the restarted gateway without the broker", n)
		}
		return nil
	})
	waitLog(t, gw, 30*time.Second, "queue full (--queue 2)")
	p.SetDown(false)
	p.SetThrottle(0)
	w.waitReported(t, 90*time.Second, kids, "1.1.0", "committed")
	for _, id := range kids {
		id := id
		eventually(t, 30*time.Second, func() error {
			return hasEvents(w.timeline(id), "r-f", "update.download.started", "update.download.progress",
				"update.download.completed", "update.reboot.completed", "update.health.ok")
		})
	}
	if got := w.blockBytes(t) - before; got >= 2*size {
		t.Errorf("the broker served %d block bytes for a %d-byte image and 3 children behind a gateway", got, size)
	}
	if !strings.Contains(gw.out.String(), "broker connection lost") {
		t.Errorf("the gateway's log does not show the lost broker connection")
	}

	w.noRefusals()
}

// childProc starts otamq-agent for an already registered child on the
// local link at sock, with its simulated flash in dir.
func (w *agentWorld) childProc(t *testing.T, id, sock, dir string) *agentProc {
	t.Helper()
	args := []string{"--link", "unix:" + sock, "--id", id, "--data-dir", dir,
		"--key", w.keyFile, "--initial-version", "1.0.0", "--supervise", "--verbose"}
	a := startAgentC(t, agentBinary(t), append(args, agentTiming...))
	a.dir = dir
	return a
}

func waitLog(t testing.TB, a *agentProc, within time.Duration, what string) {
	t.Helper()
	eventually(t, within, func() error {
		if !strings.Contains(a.out.String(), what) {
			return fmt.Errorf("no %q in the log yet", what)
		}
		return nil
	})
}

// A child registered with another gateway is refused at its HELLO (the
// broker refuses the gateway's subscription to its topics). A revoked
// child, and a child moved to another gateway: the old gateway can no
// longer act for them. The broker refuses it (the gateway's next
// check of the child's topics, every --recheck-ms, is refused: SUBACK
// 0x87), the gateway ends the child's link with WELCOME 1 "refused", and
// the child says so. The moved child, connected to its new gateway's
// link, is relayed there.
func TestGatewayChildRevokedAndMoved(t *testing.T) {
	gatewayBinary(t)
	t.Parallel()
	w := newAgentWorld(t)
	dir := shortDir(t)
	sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	gwA := w.gateway(t, "gw-a", w.url(), sockA, "--recheck-ms", "300")
	gwB := w.gateway(t, "gw-b", w.url(), sockB, "--recheck-ms", "300")
	revoked := w.child(t, "kid-rev", "gw-a", sockA)
	moved := w.child(t, "kid-mov", "gw-a", sockA)
	// a child of gw-b that says HELLO to gw-a is refused from the start
	stranger := w.child(t, "kid-gwb", "gw-b", sockA)
	w.waitReported(t, 30*time.Second, []string{"gw-a", "gw-b", "kid-rev", "kid-mov"}, "1.0.0", "")
	waitLog(t, stranger, 30*time.Second, "the gateway refused the link (status 1")
	waitLog(t, gwA, 30*time.Second, "child kid-gwb: the broker refused this gateway for it (SUBACK refused)")

	ctx := context.Background()
	if err := w.admin().Call(ctx, "device/revoke", map[string]any{"id": "kid-rev"}, nil); err != nil {
		t.Fatal(err)
	}
	waitLog(t, gwA, 30*time.Second, "child kid-rev: the broker refused this gateway for it")
	waitLog(t, revoked, 30*time.Second, "the gateway refused the link (status 1")

	if err := w.admin().Call(ctx, "device/update", map[string]any{"id": "kid-mov", "parent": "gw-b"}, nil); err != nil {
		t.Fatal(err)
	}
	waitLog(t, gwA, 30*time.Second, "child kid-mov: the broker refused this gateway for it")
	waitLog(t, moved, 30*time.Second, "the gateway refused the link (status 1")
	// the child is carried to gw-b: the broker lets gw-b act for it, and
	// gw-b relays its birth
	moved.stop()
	w.childProc(t, "kid-mov", sockB, moved.dir)
	waitLog(t, gwB, 30*time.Second, "child kid-mov: relaying")
	waitLog(t, gwB, 30*time.Second, "child kid-mov: birth relayed")
	if strings.Contains(gwB.out.String(), "the broker answered PUBACK") {
		t.Errorf("the broker refused gw-b's messages for kid-mov")
	}
}

// A gateway update while the gateway has children downloading: the
// children get 1.2.0 (320 KiB) and the gateway, at the same time, its own
// 1.1.0 (64 KiB), both through the gateway's connection and its one
// per-device rate, so the gateway finishes first. Its own agent downloads
// on its own topics beside the cache's fetch, installs and reboots (its
// supervisor starts the new image, and the relay with it); the children's
// links drop in the middle of their downloads, they reconnect after the
// reboot, resume and commit; the gateway commits its own update.
func TestGatewayUpdatesItself(t *testing.T) {
	gatewayBinary(t)
	t.Parallel()
	w := newAgentWorld(t, func(o *broker.Options) { o.DeviceRate = 48 * 1024 })
	sock := filepath.Join(shortDir(t), "gw.sock")
	gw := w.gateway(t, "gw-u", w.url(), sock)
	kids := childIDs("kid-u", 3)
	procs := map[string]*agentProc{}
	for _, id := range kids {
		procs[id] = w.child(t, id, "gw-u", sock)
	}
	w.waitReported(t, 30*time.Second, append([]string{"gw-u"}, kids...), "1.0.0", "")
	w.startRollout(t, "r-kids", w.release(simFirmware(t, w.key, "1.2.0", simHealthy, 320*1024)).ID, kids)
	w.startRollout(t, "r-gw", w.release(simFirmware(t, w.key, "1.1.0", simHealthy, 64*1024)).ID, []string{"gw-u"})
	w.waitReported(t, 60*time.Second, []string{"gw-u"}, "1.1.0", "committed")
	w.waitReported(t, 120*time.Second, kids, "1.2.0", "committed")
	if !strings.Contains(gw.out.String(), "booted slot 1 version 1.1.0") {
		t.Errorf("the gateway did not boot its update")
	}
	for id, a := range procs {
		// the gateway's reboot cut the child's link while it downloaded
		out := a.out.String()
		started := strings.Index(out, "state idle -> downloading")
		cut := strings.Index(out, "link: the gateway closed the link")
		booted := strings.Index(out, "booted slot 1 version 1.2.0")
		if started < 0 || cut < started || booted < cut {
			t.Errorf("%s: download started at %d, link cut at %d, update booted at %d in its log: the gateway's reboot did not fall in its download", id, started, cut, booted)
		}
		if err := hasEvents(w.timeline(id), "r-kids", "update.download.started", "update.download.completed",
			"update.reboot.completed", "update.health.ok"); err != nil {
			t.Error(err)
		}
	}
	w.noRefusals()
}

// The gateway's limits, driven past. --max-children 1: a second child
// gets WELCOME 2 "busy". --cache-max-bytes 100 KiB: a 64 KiB image is
// cached and installed; the next, also 64 KiB, evicts it (no child's offer
// names it any more) and is installed too; a 128 KiB image, larger than
// the whole cache, is refused to the child (block error 2, "gateway cache
// too small"), whose download fails.
func TestGatewayLimits(t *testing.T) {
	gatewayBinary(t)
	t.Parallel()
	w := newAgentWorld(t)
	sock := filepath.Join(shortDir(t), "gw.sock")
	gw := w.gateway(t, "gw-l", w.url(), sock, "--max-children", "1", "--cache-max-bytes", strconv.Itoa(100*1024))
	w.child(t, "kid-l1", "gw-l", sock)
	w.waitReported(t, 30*time.Second, []string{"kid-l1"}, "1.0.0", "")
	extra := w.child(t, "kid-l2", "gw-l", sock)
	waitLog(t, extra, 30*time.Second, "the gateway refused the link (status 2")

	w.updateTo("kid-l1", simFirmware(t, w.key, "1.1.0", simHealthy, 64*1024))
	w.waitReported(t, 60*time.Second, []string{"kid-l1"}, "1.1.0", "committed")
	w.updateTo("kid-l1", simFirmware(t, w.key, "1.2.0", simHealthy, 64*1024))
	w.waitReported(t, 60*time.Second, []string{"kid-l1"}, "1.2.0", "committed")
	waitLog(t, gw, 10*time.Second, "evicted: the cache is full")

	big := w.updateTo("kid-l1", simFirmware(t, w.key, "1.3.0", simHealthy, 128*1024))
	eventually(t, 60*time.Second, func() error {
		for _, e := range w.timeline("kid-l1") {
			if e.RolloutID == big && e.Type == "update.download.failed" && e.Detail == "unknown image" {
				return nil
			}
		}
		return fmt.Errorf("no failed download of the image larger than the cache yet")
	})
	waitLog(t, gw, 10*time.Second, "does not fit the cache")
	if st := w.status("kid-l1"); st.Firmware != "1.2.0" {
		t.Fatalf("kid-l1 runs %q", st.Firmware)
	}
}
