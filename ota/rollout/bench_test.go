package rollout

import (
	"fmt"
	"testing"
)

// BenchmarkPassOffers: one pass of a rollout of 4,000 connected devices
// (one wave of 100 %, no rate limit) that offers every one of them, as the
// rollout offers benchmark of test/bench does, without MQTT: the decisions,
// their transactions (no fsync) and the sends to a sender that records.
// Each round aborts its rollout, untimed, for the next one.
func BenchmarkPassOffers(b *testing.B) {
	const n = 4000
	e := newEnv(b)
	rel := e.release("1.1.0", 0, "esp32-v2")
	ds := make([]dev, n)
	for i := range ds {
		ds[i] = dev{id: fmt.Sprintf("dev-%05d", i), hw: "esp32-v2", firmware: "1.0.0"}
	}
	e.devices(ds...)
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		id := fmt.Sprintf("b%d", round)
		e.create(fmt.Sprintf("id: %s\nrelease: %s\nwaves:\n  - {percent: [100]}\ninstall: immediately\n", id, rel.ID))
		e.start(id)
		b.StartTimer()
		e.pass()
		b.StopTimer()
		if v := e.get(id); v.Counts["offered"] != n {
			b.Fatalf("%d offered, want %d: %+v", v.Counts["offered"], n, v.Counts)
		}
		if _, err := e.eng.Abort("alice", id, "bench", e.commit); err != nil {
			b.Fatal(err)
		}
		e.pass()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/offer")
}
