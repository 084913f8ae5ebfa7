package wire

import "math"

// A fast path for the heartbeat, the one device message that arrives all
// the time from every device. fxamacker/cbor's reflection-based decoding
// costs about 0.4 µs a heartbeat, as much as the rest of otamq's work on the
// message put together (make bench, docs/BENCHMARKS.md). fastHeartbeat
// reads the common case, a map whose integer keys come in increasing order
// with values of the expected types (what a conforming agent sends, and what
// deterministic encoding produces), without reflection or allocation.
// Anything else (keys out of order or unknown, other types, trailing bytes)
// makes it give up and DecodeHeartbeat falls back to the library, which
// stays the authority on what is valid: the fuzz target
// FuzzFastHeartbeatAgreesWithLibrary checks that whenever the fast path
// accepts, the library decodes the same value.

// reader reads CBOR heads from b.
type reader struct {
	b   []byte
	off int
}

// head reads one item head: major type and argument. Indefinite lengths,
// reserved values and floats/simple values are refused (ok false).
func (r *reader) head() (major byte, arg uint64, ok bool) {
	if r.off >= len(r.b) {
		return 0, 0, false
	}
	ib := r.b[r.off]
	r.off++
	major, info := ib>>5, ib&0x1f
	switch {
	case info < 24:
		return major, uint64(info), true
	case info > 27:
		return 0, 0, false
	}
	n := 1 << (info - 24) // 1, 2, 4 or 8 bytes
	if len(r.b)-r.off < n {
		return 0, 0, false
	}
	for i := 0; i < n; i++ {
		arg = arg<<8 | uint64(r.b[r.off+i])
	}
	r.off += n
	return major, arg, major != 7
}

// uint reads an unsigned integer no larger than max.
func (r *reader) uint(max uint64) (uint64, bool) {
	major, v, ok := r.head()
	return v, ok && major == 0 && v <= max
}

// int16 reads a signed integer that fits an int16.
func (r *reader) int16() (int16, bool) {
	major, v, ok := r.head()
	switch {
	case !ok:
		return 0, false
	case major == 0 && v <= math.MaxInt16:
		return int16(v), true
	case major == 1 && v <= math.MaxInt16: // -1-v >= math.MinInt16
		return int16(-1 - int64(v)), true
	}
	return 0, false
}

// fastHeartbeat decodes b if it is a heartbeat in the common shape, and
// reports whether it did.
func fastHeartbeat(b []byte) (Heartbeat, bool) {
	r := reader{b: b}
	major, pairs, ok := r.head()
	if !ok || major != 5 || pairs > 7 {
		return Heartbeat{}, false
	}
	var m Heartbeat
	last := uint64(0)
	for range pairs {
		key, ok := r.uint(7)
		if !ok || key <= last {
			return Heartbeat{}, false
		}
		last = key
		var v uint64 // (a local whose address is never taken stays off the heap)
		switch key {
		case 1:
			v, ok = r.uint(math.MaxUint64)
			m.UptimeSeconds = v
		case 2:
			v, ok = r.uint(math.MaxUint8)
			m.HealthFlags = uint8(v)
		case 3:
			v, ok = r.uint(math.MaxUint32)
			m.WatchdogResets = uint32(v)
		case 4:
			v, ok = r.uint(math.MaxUint32)
			m.FreeHeap = uint32(v)
		case 5:
			m.RSSI, ok = r.int16()
		case 6:
			v, ok = r.uint(math.MaxUint8)
			m.OTAState = OTAState(v)
		case 7:
			v, ok = r.uint(math.MaxUint64)
			m.DownloadOffset = new(uint64)
			*m.DownloadOffset = v
		}
		if !ok {
			return Heartbeat{}, false
		}
	}
	return m, r.off == len(b)
}
