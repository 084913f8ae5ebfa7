package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/otamq/otamq/ota/wire"
)

// benchHeartbeat: how many heartbeats per second the broker ingests with
// every otamq hook (authentication, ACL, CBOR decoding, registry update)
// against plain mochi relaying the same bytes, and raw loopback TCP. All
// three run in this process, one after the other, with the same load: hbConns
// connections each writing hbPer pre-encoded QoS 0 PUBLISH packets.
func benchHeartbeat() error { return heartbeatBench(0) }

// heartbeatBench is benchHeartbeat; with inRollout > 0, otamq's registry
// holds that many devices besides the publishing ones, and a rollout of
// all of them (publishers included) runs, every device offered.
func heartbeatBench(inRollout int) error {
	n, per := *hbConns, *hbPer
	payload := wire.Heartbeat{UptimeSeconds: 3600, HealthFlags: wire.HealthAllOK, WatchdogResets: 0, FreeHeap: 120000, RSSI: -61}.Encode()
	fmt.Printf("== heartbeat ingest: %d connections x %d QoS 0 heartbeats (%d-byte CBOR payload), %d rounds\n",
		n, per, len(payload), *rounds)
	if inRollout > 0 {
		fmt.Printf("   with a rollout running in otamq: %d devices registered, all of them in the rollout and offered (in flight), the publishers among them\n", n+inRollout)
	}

	ids := make([]string, n)
	bufs := make([][]byte, n)
	for i := range ids {
		ids[i] = deviceID(i)
		pk := publishPacket("dm/"+ids[i]+"/hb", payload)
		bufs[i] = make([]byte, 0, len(pk)*per)
		for range per {
			bufs[i] = append(bufs[i], pk...)
		}
	}
	pktLen := int64(len(bufs[0]) / per)
	total := int64(n * per)

	// The three servers run side by side; each round measures all three
	// back to back, so load from elsewhere on the machine hits them alike,
	// and the ratio reported is the median of the per-round ratios.
	sink, sinkBytes, err := tcpSink()
	if err != nil {
		return err
	}
	defer sink.Close()
	srv, maddr, err := plainMochi(true)
	if err != nil {
		return err
	}
	defer closeMochi(srv)
	dir, err := os.MkdirTemp("", "otamq-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := seedDevices(dir, n+inRollout); err != nil {
		return err
	}
	b, err := otamqBroker(dir, false)
	if err != nil {
		return err
	}
	defer b.Shutdown(contextBackground())
	osrv := b.Server()
	if inRollout > 0 {
		if err := runRollout(b.Addr(), n+inRollout); err != nil {
			return err
		}
	}

	var raws, mochis, otamqs, ratios []float64
	for range *rounds {
		var raw, m, o float64 = 1, 1, 1
		if *hbOnly == "" || *hbOnly == "raw" {
			start := sinkBytes.Load()
			if raw, err = blast(bufs, func(int) (net.Conn, error) { return net.Dial("tcp", sink.Addr().String()) },
				func() bool { return (sinkBytes.Load()-start)/pktLen >= total }, total); err != nil {
				return err
			}
		}
		if *hbOnly == "" || *hbOnly == "mochi" {
			mstart := received(srv)
			if m, err = blast(bufs, func(i int) (net.Conn, error) { return dial(maddr, ids[i], "", "", "") },
				func() bool { return received(srv)-mstart >= total }, total); err != nil {
				return err
			}
		}
		if *hbOnly == "" || *hbOnly == "otamq" {
			ostart := received(osrv)
			if o, err = blast(bufs, func(i int) (net.Conn, error) { return dial(b.Addr(), ids[i], ids[i], token(ids[i]), "") },
				func() bool { return received(osrv)-ostart >= total }, total); err != nil {
				return err
			}
		}
		raws, mochis, otamqs, ratios = append(raws, raw), append(mochis, m), append(otamqs, o), append(ratios, o/m)
		fmt.Printf("  round: raw %.0f, mochi %.0f, otamq %.0f msg/s, ratio %.2f\n", raw, m, o, o/m)
	}
	// Every heartbeat reached the registry (mochi counts a message when it
	// has read it, just before the hooks run, so the last few may still be
	// on their way).
	if *hbOnly == "" || *hbOnly == "otamq" {
		want := uint64(total) * uint64(*rounds)
		var hb uint64
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			hb = 0
			for _, id := range ids {
				v, _ := b.Fleet().Get(id)
				hb += v.Status.Heartbeats
			}
			if hb == want || time.Now().After(deadline) {
				break
			}
		}
		if hb != want {
			return fmt.Errorf("registry counted %d heartbeats, want %d", hb, want)
		}
	}
	raw, mochiRate, otamqRate := median(raws), median(mochis), median(otamqs)
	fmt.Printf("raw loopback TCP        %10.0f msg/s\n", raw)
	fmt.Printf("plain mochi (no hooks)  %10.0f msg/s\n", mochiRate)
	fmt.Printf("otamq (all hooks)       %10.0f msg/s\n", otamqRate)
	fmt.Printf("ratio otamq / plain mochi: %.2f, median of the rounds (target >= 0.80)\n", median(ratios))
	return nil
}

func received(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.MessagesReceived) }

// median returns the median of vs.
func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[len(s)/2]
}

// blast connects len(bufs) clients, then writes every buffer at once and
// returns messages per second until done reports that all were processed.
func blast(bufs [][]byte, connect func(i int) (net.Conn, error), done func() bool, total int64) (float64, error) {
	conns := make([]net.Conn, len(bufs))
	for i := range bufs {
		c, err := connect(i)
		if err != nil {
			return 0, err
		}
		conns[i] = c
	}
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	// Collect before the clock starts, as Go's own benchmarks do: the
	// connections' garbage (all three servers share this process) would
	// otherwise be collected inside whichever measurement comes next.
	runtime.GC()
	var wg sync.WaitGroup
	start := time.Now()
	errs := make(chan error, len(conns))
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Write(bufs[i]); err != nil {
				errs <- err
			}
		}()
	}
	deadline := time.Now().Add(5 * time.Minute)
	for !done() {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("not all %d messages processed within 5 minutes", total)
		}
		select {
		case err := <-errs:
			return 0, err
		default:
		}
		time.Sleep(200 * time.Microsecond)
	}
	elapsed := time.Since(start)
	wg.Wait()
	return float64(total) / elapsed.Seconds(), nil
}

// tcpSink accepts connections and discards what they send, counting bytes.
func tcpSink() (net.Listener, *atomic.Int64, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	var n atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64*1024)
				for {
					k, err := c.Read(buf)
					n.Add(int64(k))
					if err != nil {
						if err != io.EOF {
							return
						}
						return
					}
				}
			}()
		}
	}()
	return l, &n, nil
}
