package wire

import (
	"bytes"
	"reflect"
	"testing"
)

// Each fuzz target checks that the decoder never panics, and that whatever it
// accepts survives a round trip through the encoder unchanged.

func seed(f *testing.F, hexes ...string) {
	for _, h := range hexes {
		f.Add(unhex(f, h))
	}
}

func FuzzDecodeBirth(f *testing.F) {
	seed(f, designBirth, "a3 0c66667574757265 026865737033322d7632 0165312e302e30", "a2 0165312e322e33 0165312e322e33",
		"bf0165312e322e33ff", "a3 0165312e322e33 026161 04f93c00")
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeBirth(in)
		if err != nil {
			return
		}
		again, err := DecodeBirth(m.Encode())
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip: %+v -> %+v, %v", m, again, err)
		}
	})
}

func FuzzDecodeHeartbeat(f *testing.F) {
	seed(f, designHeartbeat, "a1 0505", "a1 031b0000000100000000", "a2 0601 071910 00")
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeHeartbeat(in)
		if err != nil {
			return
		}
		again, err := DecodeHeartbeat(m.Encode())
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip: %+v -> %+v, %v", m, again, err)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(Event{Code: EvDownloadCompleted, RolloutID: "r-2025-11-24", TargetVersion: "1.2.4", Progress: 100, DeviceTime: 1764000000}.Encode())
	f.Add(Event{Code: EvRejected, Error: ErrCodeSignature, Detail: "bad signature"}.Encode())
	seed(f, "a1 0100", "a2 0104 041865")
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeEvent(in)
		if err != nil {
			return
		}
		again, err := DecodeEvent(m.Encode())
		if err != nil || again != m {
			t.Fatalf("round trip: %+v -> %+v, %v", m, again, err)
		}
	})
}

func FuzzDecodeBlockRequest(f *testing.F) {
	f.Add(BlockRequest{Digest: bytes.Repeat([]byte{1}, 32), Offset: 8192, Size: 4096, Count: 8, RequestID: 42}.Encode())
	seed(f, "a5 014100 0200 03190400 0401 0501")
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeBlockRequest(in)
		if err != nil {
			return
		}
		again, err := DecodeBlockRequest(m.Encode())
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip: %+v -> %+v, %v", m, again, err)
		}
	})
}

func FuzzDecodeBlock(f *testing.F) {
	seed(f, designBlock, "a2 0101 0200")
	f.Add(BlockError{RequestID: 42, Offset: 8192, Code: BlockRateLimited, RetryAfterMS: 250, Message: "rate limited"}.Encode())
	f.Fuzz(func(t *testing.T, in []byte) {
		b, be, err := DecodeBlock(in, 1024)
		if err != nil {
			if b != nil || be != nil {
				t.Fatal("error with a result")
			}
			return
		}
		if (b == nil) == (be == nil) {
			t.Fatalf("want exactly one result, got %v %v", b, be)
		}
		if b != nil {
			again, _, err := DecodeBlock(AppendBlock(nil, b.RequestID, b.Offset, b.ImageSize, b.Data), 1024)
			if err != nil || !reflect.DeepEqual(again, b) {
				t.Fatalf("round trip: %+v -> %+v, %v", b, again, err)
			}
		}
	})
}

func FuzzDecodeOfferAndCommand(f *testing.F) {
	f.Add(Offer{RolloutID: "r1", Manifest: []byte{0xd2, 0x84}, BlockSize: 4096}.Encode())
	f.Add(Command{Verb: VerbInstall, RolloutID: "r1"}.Encode())
	f.Fuzz(func(t *testing.T, in []byte) {
		if m, err := DecodeOffer(in); err == nil {
			if again, err := DecodeOffer(m.Encode()); err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("offer round trip: %+v -> %+v, %v", m, again, err)
			}
		}
		if m, err := DecodeCommand(in); err == nil {
			if again, err := DecodeCommand(m.Encode()); err != nil || again != m {
				t.Fatalf("command round trip: %+v -> %+v, %v", m, again, err)
			}
		}
	})
}

// FuzzFastHeartbeatAgreesWithLibrary: whenever the fast path accepts a
// heartbeat, the strict path (checkShape, then the library) accepts it too
// and decodes exactly the same value from the same bytes.
func FuzzFastHeartbeatAgreesWithLibrary(f *testing.F) {
	off := uint64(1 << 40)
	seed(f, designHeartbeat, "a0", "a1 0505", "a2 0539ffff 0618ff", "a2 0201 0101", "a3 011bffffffffffffffff 0220 0701",
		"a1 6161 01", "a1 20 01", "a1 00 01", "a1 1801 01", "a1 01 1900ff", "b80101 01", "a1 01 1818", "a1 01 190100")
	f.Add(Heartbeat{UptimeSeconds: 1, HealthFlags: 7, WatchdogResets: 1 << 31, FreeHeap: 5, RSSI: -32768, OTAState: 8, DownloadOffset: &off}.Encode())
	f.Fuzz(func(t *testing.T, in []byte) {
		fast, ok := fastHeartbeat(in)
		if !ok {
			return
		}
		if err := checkShape(in, heartbeatKeys); err != nil {
			t.Fatalf("fast path accepted %x, the strict shape check refuses: %v", in, err)
		}
		var lib Heartbeat
		if err := decMode.Unmarshal(in, &lib); err != nil {
			t.Fatalf("fast path accepted %x, library refuses: %v", in, err)
		}
		if !reflect.DeepEqual(fast, lib) {
			t.Fatalf("%x: fast path %+v, library %+v", in, fast, lib)
		}
	})
}
