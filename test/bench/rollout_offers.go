package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/ota/wire"
)

var (
	roConns     = flag.Int("ro-conns", 10000, "rollout offers benchmark: connected devices subscribed to their manifest topic")
	roSilent    = flag.Bool("ro-silent", false, "rollout offers benchmark: the devices never answer an offer (they still send their births): their offer records carry the entries of every round's offer and abort, and the offers of rounds 5, 9, 13 and so on write them into the timelines")
	roRounds    = flag.Int("ro-rounds", 11, "rollout offers benchmark: rounds (the median is reported)")
	roProf      = flag.String("ro-offers-cpuprofile", "", "rollout offers benchmark: write the otamq server's CPU profile of each round's offers to FILE.N")
	roTrace     = flag.String("ro-offers-trace", "", "rollout offers benchmark: write the otamq server's execution trace of each round's offers to FILE.N (go tool trace)")
	roMochiProf = flag.String("ro-mochi-cpuprofile", "", "rollout offers benchmark: write plain mochi's CPU profile of each round's messages to FILE.N")
	roMochiPar  = flag.Int("ro-mochi-publishers", 1, "rollout offers benchmark: goroutines plain mochi publishes on (each device's message on one of them)")
	roAllocs    = flag.String("ro-offers-allocprofile", "", "rollout offers benchmark: write the otamq server's heap profiles before (FILE.N.base) and after each round's offers (FILE.N; go tool pprof -sample_index=alloc_space -base FILE.N.base FILE.N)")
)

// benchRolloutOffers: offers a rollout pushes to connected devices, per
// second, against plain mochi publishing the same payloads to the same
// subscribers. The devices are raw MQTT 3.1.1 clients (one goroutine and a
// small buffer each; devsim's devices would begin to download at once,
// and its load mode subscribes to nothing), each subscribed at QoS 1 to its
// manifest topic, acknowledging what it gets. Each server runs as a child
// process (10,000 connections take 20,000 descriptors on one machine), and
// the devices connect to one server at a time: in each round to otamq, then
// to plain mochi.
//
// otamq: the real broker; its devices send a birth after they connect, as
// an agent does (so their offers pass the version rules on what they run).
// The rollout (every device, one wave of 100 %, no rate limit) is created
// through the admin API, then rollout/start: the engine's next pass decides
// every offer, commits them (transactions of 250 devices, then twice as
// many up to 4,000; each offer with its timeline entry and the device's
// rollout record, fsync on) and pushes them. The time runs from the start
// request to the last offer received. Each server has settled after the
// devices connected (for otamq: their status flushed, their connects
// published) before its measurement. After it, untimed, each device
// answers its offer (it begins to download), and the rollout is aborted
// (every device gets the empty offer), for the next round's rollout.
//
// plain mochi (otamq's capabilities, no hooks): its inline client
// (Server.Publish, as otamq's sender) publishes the payload the devices got
// from otamq in the same round to each device's manifest topic, at QoS 1,
// one after the other. Time from the request to publish to the last
// message received.
func benchRolloutOffers() error {
	profiles := 0
	for _, f := range []string{*roProf, *roTrace, *roAllocs} {
		if f != "" {
			profiles++
		}
	}
	if profiles > 1 {
		return fmt.Errorf("give one of -ro-offers-cpuprofile, -ro-offers-trace and -ro-offers-allocprofile: the server takes one at a time")
	}
	n := *roConns
	fmt.Printf("== offers pushed by a rollout to %d connected devices (raw MQTT 3.1.1 clients subscribed to their manifest topic, QoS 1) against plain mochi publishing the same payloads, %d rounds; servers in child processes\n", n, *roRounds)
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "otamq-bench-offers-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := seedDevices(dir, n); err != nil {
		return err
	}
	oc, err := startChild("otamq", dir)
	if err != nil {
		return err
	}
	defer oc.stop()
	mc, err := startChild("mochi-inline", dir)
	if err != nil {
		return err
	}
	defer mc.stop()
	c, err := rpc.Dial(ctx, rpc.Config{URL: "mqtt://" + oc.mqttAddr, Username: "bench", Password: benchOperatorPassword, Timeout: 2 * time.Minute})
	if err != nil {
		return err
	}
	defer c.Close()
	_, rel, err := uploadRelease(c, 64*1024)
	if err != nil {
		return err
	}

	var orates, mrates, ratios, ocpus, mcpus, oallocs, mallocs []float64
	for round := range *roRounds {
		id := fmt.Sprintf("bench-offers-%d", round)
		spec := fmt.Sprintf("id: %s\nrelease: %s\nwaves:\n  - {percent: [100]}\ninstall: immediately\nversions: {major: true}\n", id, rel.ID)
		var created struct {
			Rollout rollout.View `json:"rollout"`
		}
		if err := c.Call(ctx, "rollout/create", map[string]any{"yaml": spec}, &created); err != nil {
			return fmt.Errorf("rollout/create: %w", err)
		}
		if created.Rollout.Devices != n {
			return fmt.Errorf("rollout of %d devices, want %d", created.Rollout.Devices, n)
		}
		subs, err := subscribeOffers(oc.mqttAddr, n, true)
		if err != nil {
			return err
		}
		// the status flush and the connect events of the devices that
		// just connected are theirs, not the offers'
		if err := oc.settle(fleet.DefaultFlushInterval + 500*time.Millisecond); err != nil {
			subs.close()
			return err
		}
		if err := checkBorn(ctx, c, deviceID(0), deviceID(n-1)); err != nil {
			subs.close()
			return err
		}
		profDone := make(chan error, 1)
		heapAt := func(suffix string) error { return nil } // the allocations' profile
		switch {
		case *roAllocs != "":
			// A heap profile counts allocations as of the last GC: one
			// forced before the round and one after it bracket the round.
			heapAt = func(suffix string) error {
				body, err := get("http://" + oc.httpAddr + "/debug/pprof/heap?gc=1")
				if err == nil {
					err = os.WriteFile(fmt.Sprintf("%s.%d%s", *roAllocs, round+1, suffix), []byte(body), 0o600)
				}
				return err
			}
			profDone <- heapAt(".base")
		case *roProf != "":
			profDone = profileRound(oc.httpAddr, "profile", *roProf, round)
		case *roTrace != "":
			profDone = profileRound(oc.httpAddr, "trace", *roTrace, round)
		default:
			profDone <- nil
		}
		ou0, err := oc.usage(true)
		if err != nil {
			subs.close()
			return err
		}
		om0 := machineTicks()
		start := time.Now()
		if err := c.Call(ctx, "rollout/start", map[string]any{"id": id}, nil); err != nil {
			subs.close()
			return fmt.Errorf("rollout/start: %w", err)
		}
		first, last, err := subs.wait(n)
		om1 := machineTicks()
		if err != nil {
			subs.close()
			return fmt.Errorf("otamq: %w", err)
		}
		o := float64(n) / last.Sub(start).Seconds()
		ou1, err := oc.usage(false)
		if err != nil {
			subs.close()
			return err
		}
		if err := <-profDone; err != nil {
			subs.close()
			return fmt.Errorf("server profile: %w", err)
		}
		if err := heapAt(""); err != nil {
			subs.close()
			return fmt.Errorf("server profile: %w", err)
		}
		payload := subs.payload()
		// Each device answers its offer as the agent does, untimed: it
		// starts downloading. Its event writes the timeline entries its
		// offer record carries (deferred.go), as in a fleet, where a
		// device's next event follows its offer (-ro-silent: the offers
		// of rounds 5, 9, ... write them, after four rounds of entries).
		if !*roSilent {
			if err := answerOffers(ctx, c, subs, id, rel.Version, n); err != nil {
				subs.close()
				return err
			}
		}
		// The next round's devices must be free: abort, and wait for the
		// empty offers.
		subs.reset()
		t := time.Now()
		if err := c.Call(ctx, "rollout/abort", map[string]any{"id": id}, nil); err != nil {
			subs.close()
			return fmt.Errorf("rollout/abort: %w", err)
		}
		_, cancelled, err := subs.wait(n)
		subs.close()
		if err != nil {
			return fmt.Errorf("otamq cancels: %w", err)
		}
		abort := float64(n) / cancelled.Sub(t).Seconds()

		subs, err = subscribeOffers(mc.mqttAddr, n, false)
		if err != nil {
			return err
		}
		if err := mc.settle(0); err != nil {
			subs.close()
			return err
		}
		mprofDone := make(chan error, 1)
		if *roMochiProf != "" {
			mprofDone = profileRound(mc.ctlAddr, "profile", *roMochiProf, round)
		} else {
			mprofDone <- nil
		}
		mu0, err := mc.usage(true)
		if err != nil {
			subs.close()
			return err
		}
		mm0 := machineTicks()
		mstart := time.Now()
		resp, err := http.Post(fmt.Sprintf("http://%s/publish?n=%d&par=%d", mc.ctlAddr, n, *roMochiPar), "application/octet-stream", bytes.NewReader(payload))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("publish: %s", resp.Status)
			}
		}
		if err != nil {
			subs.close()
			return err
		}
		_, mlast, err := subs.wait(n)
		mm1 := machineTicks()
		if err != nil {
			subs.close()
			return fmt.Errorf("mochi: %w", err)
		}
		m := float64(n) / mlast.Sub(mstart).Seconds()
		// before the devices disconnect, as for otamq: 10,000
		// disconnections are no part of the messages' cost
		mu1, err := mc.usage(false)
		if err == nil {
			err = <-mprofDone // its window, as otamq's, ends before the devices disconnect
		}
		subs.close()
		if err != nil {
			return err
		}
		// CPU per message of each server, from its own process: it does
		// not depend on what else the machine runs, as the rates do.
		ou, mu := us(ou1.cpu-ou0.cpu)/float64(n), us(mu1.cpu-mu0.cpu)/float64(n)
		// what each allocated per message (a long-running server
		// collects in proportion), and the collections in the window
		oa, ma := float64(ou1.allocs-ou0.allocs)/float64(n)/1024, float64(mu1.allocs-mu0.allocs)/float64(n)/1024
		orates, mrates, ratios = append(orates, o), append(mrates, m), append(ratios, o/m)
		ocpus, mcpus = append(ocpus, ou), append(mcpus, mu)
		oallocs, mallocs = append(oallocs, oa), append(mallocs, ma)
		fmt.Printf("  round %d: otamq %6.0f offers/s (first after %4.0f ms, last after %4.0f ms; the abort's empty offers %6.0f/s; %5.1f µs CPU, %4.1f KiB allocated each, %d GC; machine %s), plain mochi %6.0f msg/s (%5.1f µs CPU, %4.1f KiB each, %d GC; machine %s), ratio %.2f\n",
			round+1, o, ms(first.Sub(start)), ms(last.Sub(start)), abort, ou, oa, ou1.cycles-ou0.cycles, om1.since(om0), m, mu, ma, mu1.cycles-mu0.cycles, mm1.since(mm0), o/m)
	}
	fmt.Printf("otamq, offers of a rollout (decided, committed, pushed)   %8.0f offers/s (target >= 20000/s)\n", median(orates))
	fmt.Printf("plain mochi, the same payloads published (inline client)  %8.0f msg/s\n", median(mrates))
	fmt.Printf("ratio otamq / plain mochi: %.2f, median of the rounds (target >= 0.70)\n", median(ratios))
	fmt.Printf("server CPU per message (user + system, 10 ms ticks): otamq %.1f µs per offer, plain mochi %.1f µs per message, medians; mochi / otamq %.2f\n",
		median(ocpus), median(mcpus), median(mcpus)/median(ocpus))
	fmt.Printf("heap allocated per message: otamq %.1f KiB per offer, plain mochi %.1f KiB per message, medians (each server collects right before its measurement)\n",
		median(oallocs), median(mallocs))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// offerSubs are connected devices that read their manifest topic.
type offerSubs struct {
	conns []net.Conn
	wg    sync.WaitGroup
	got   atomic.Int64
	last  atomic.Int64 // Unix nanoseconds of the newest message
	first atomic.Int64
	mu    sync.Mutex
	pl    []byte // a payload received since the reset
}

// profileRound takes a one-second pprof profile of kind ("profile",
// "trace") from the server whose HTTP address is addr into file.N (N the
// round from 1), and returns the channel of its result. The profile has
// begun when it returns.
func profileRound(addr, kind, file string, round int) chan error {
	done := make(chan error, 1)
	go func() {
		body, err := get("http://" + addr + "/debug/pprof/" + kind + "?seconds=1")
		if err == nil {
			err = os.WriteFile(fmt.Sprintf("%s.%d", file, round+1), []byte(body), 0o600)
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	return done
}

// subscribeOffers connects devices 0..n-1 subscribed to their manifest
// topics (with their tokens when auth) and reads what they get, sending a
// PUBACK for each QoS 1 message.
func subscribeOffers(addr string, n int, auth bool) (*offerSubs, error) {
	cs, err := connectMany(addr, n, auth, "ota/manifest")
	if err != nil {
		return nil, err
	}
	if auth {
		// otamq's devices say what they run, as an agent does after each
		// connect: their offers pass the version rules.
		for i, c := range cs {
			if _, err := c.Write(publishPacket("dm/"+deviceID(i)+"/"+access.KindBirth, benchBirth)); err != nil {
				for _, c := range cs {
					_ = c.Close()
				}
				return nil, fmt.Errorf("device %s's birth: %w", deviceID(i), err)
			}
		}
	}
	s := &offerSubs{conns: cs}
	for _, c := range cs {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.read(c)
		}()
	}
	return s, nil
}

func (s *offerSubs) read(c net.Conn) {
	rc := &rawConn{c: c, r: bufio.NewReaderSize(c, 2048)}
	for {
		h, body, err := rc.next()
		if err != nil {
			return
		}
		if h>>4 != packets.Publish || len(body) < 2 {
			continue
		}
		tl := int(body[0])<<8 | int(body[1])
		p := 2 + tl
		if (h>>1)&3 > 0 {
			if p+2 > len(body) {
				return
			}
			if _, err := c.Write([]byte{packets.Puback << 4, 2, body[p], body[p+1]}); err != nil {
				return
			}
			p += 2
		}
		now := time.Now().UnixNano()
		s.first.CompareAndSwap(0, now)
		for {
			l := s.last.Load()
			if now <= l || s.last.CompareAndSwap(l, now) {
				break
			}
		}
		if s.got.Add(1) == 1 {
			s.mu.Lock()
			s.pl = append([]byte(nil), body[p:]...)
			s.mu.Unlock()
		}
	}
}

func (s *offerSubs) reset() {
	s.got.Store(0)
	s.first.Store(0)
	s.last.Store(0)
}

// wait waits for n messages since the reset and returns when the first
// and the last arrived.
func (s *offerSubs) wait(n int) (time.Time, time.Time, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for s.got.Load() < int64(n) {
		if time.Now().After(deadline) {
			return time.Time{}, time.Time{}, fmt.Errorf("%d of %d messages received within 2 minutes", s.got.Load(), n)
		}
		time.Sleep(200 * time.Microsecond)
	}
	if got := s.got.Load(); got != int64(n) {
		return time.Time{}, time.Time{}, fmt.Errorf("%d messages received, want %d", got, n)
	}
	return time.Unix(0, s.first.Load()), time.Unix(0, s.last.Load()), nil
}

func (s *offerSubs) payload() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pl
}

func (s *offerSubs) close() {
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.wg.Wait()
}

const benchFirmware = "1.9.0"

// benchBirth is the birth of the offers benchmark's devices: older than the
// release uploadRelease makes (2.0.0), which the rollout lets them take.
var benchBirth = wire.Birth{FirmwareVersion: benchFirmware, Hardware: "esp32-v2", Bootloader: "1.0.0", OTAState: wire.StateIdle,
	AgentVersion: "bench", Connectivity: wire.ConnWiFi}.Encode()

// checkBorn fails unless each of ids runs the firmware of benchBirth: the
// offers would skip the version rules of devices whose births were lost.
func checkBorn(ctx context.Context, c *rpc.Client, ids ...string) error {
	for _, id := range ids {
		var v fleet.View
		if err := c.Call(ctx, "device/get", map[string]any{"id": id}, &v); err != nil {
			return fmt.Errorf("device/get %s: %w", id, err)
		}
		if v.Status.Firmware != benchFirmware {
			return fmt.Errorf("device %s runs %q after its birth, want %s", id, v.Status.Firmware, benchFirmware)
		}
	}
	return nil
}

// answerOffers makes each device of subs send the event an agent sends when
// it begins to download rid's offer of version, and waits until the
// rollout counts every device of its n downloading.
func answerOffers(ctx context.Context, c *rpc.Client, subs *offerSubs, rid, version string, n int) error {
	for i, conn := range subs.conns {
		ev := wire.Event{Code: wire.EvDownloadStarted, RolloutID: rid, TargetVersion: version}
		if _, err := conn.Write(publishPacket("dm/"+deviceID(i)+"/"+access.KindEvent, ev.Encode())); err != nil {
			return fmt.Errorf("device %s's event: %w", deviceID(i), err)
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var got rollout.View
		if err := c.Call(ctx, "rollout/get", map[string]any{"id": rid}, &got); err != nil {
			return fmt.Errorf("rollout/get: %w", err)
		}
		if got.Counts["downloading"] == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d devices downloading after their events: %v", got.Counts["downloading"], n, got.Counts)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
