package rollout

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"unsafe"
)

// The pusher sends every device of every batch exactly once, and a
// device's batches in the order they were pushed, whatever the number of
// goroutines. (Each batch's ID strings are new, so the string's data
// pointer says which batch a send came from.)
func TestPusherKeepsEachDevicesOrder(t *testing.T) {
	for _, n := range []int{1, 2, 4} {
		var mu sync.Mutex
		batchOf := map[*byte]int{}
		got := map[string][]int{} // device: the batches it was sent in, in order
		p := startPusher(func(ids []string) {
			mu.Lock()
			slow := batchOf[unsafe.StringData(ids[0])]%2 == 0
			mu.Unlock()
			if slow {
				// the goroutines drift apart, so that a device sent from two
				// of them would arrive out of order
				for range 100 {
					runtime.Gosched()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				got[id] = append(got[id], batchOf[unsafe.StringData(id)])
			}
		}, n)
		const batches, devices = 30, 40
		for b := range batches {
			var ids []string
			for d := range devices {
				if (d+b)%3 != 0 { // each batch a different subset
					id := fmt.Sprintf("dev-%03d", d)
					mu.Lock()
					batchOf[unsafe.StringData(id)] = b
					mu.Unlock()
					ids = append(ids, id)
				}
			}
			p.push(ids)
		}
		p.wait()
		for d := range devices {
			id := fmt.Sprintf("dev-%03d", d)
			var want []int
			for b := range batches {
				if (d+b)%3 != 0 {
					want = append(want, b)
				}
			}
			if !slices.Equal(got[id], want) {
				t.Errorf("%d goroutines: %s sent in batches %v, want %v", n, id, got[id], want)
			}
		}
	}
}
