package wire

import (
	"errors"
	"fmt"
	"math"
)

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
	b    []byte
	off  int
	fail int // see skip
}

// head reads one item head: major type and argument. Indefinite lengths,
// reserved values, floats/simple values and arguments not in their
// shortest form are refused (ok false).
func (r *reader) head() (major byte, arg uint64, ok bool) {
	major, arg, ok = r.anyHead()
	return major, arg, ok && major != 7
}

// anyHead reads one item head of any major type; for major type 7 the
// argument is the simple value or the float's bits. Arguments must be in
// their shortest form (floats excepted, whose width is their precision).
func (r *reader) anyHead() (major byte, arg uint64, ok bool) {
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
	if major == 7 {
		return major, arg, n > 1 // a one-byte simple value is never well-formed here
	}
	// Shortest form: 24..255 in one byte, then 2, 4, 8.
	shortest := arg >= 24 && (n == 1 || arg>>(4*n) != 0)
	return major, arg, shortest
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

// maxSkipDepth bounds the nesting of an unknown key's value.
const maxSkipDepth = 4

// checkShape enforces the encoding rules the CBOR library leaves open
// (docs/PROTOCOL.md, "Encoding"): the message is one map of definite
// length and nothing after it; every key is an unsigned integer from 1 up,
// keys up to maxKey being the message's own and higher ones skipped (room
// for later versions); every integer, length and key is in its shortest
// form; no tags, floats or simple values other than false, true and null.
// A text key, a negative key or key 0 would otherwise be ignored like an
// unknown key, and a heartbeat of nothing but such keys decoded as all
// zeros. The types of known keys are the library's to check.
func checkShape(b []byte, maxKey uint64) error {
	r := reader{b: b}
	major, pairs, ok := r.head()
	switch {
	case !ok || major == 6:
		return fmt.Errorf("message: %s", describe(b, 0))
	case major != 5:
		return errors.New("message is not a map")
	}
	for range pairs {
		start := r.off
		major, key, ok := r.head()
		switch {
		case !ok:
			return fmt.Errorf("key at byte %d: %s", start, describe(b, start))
		case major != 0:
			return fmt.Errorf("key at byte %d is not an unsigned integer", start)
		case key == 0:
			return errors.New("key 0 is not defined")
		}
		if !r.skip(maxSkipDepth) {
			return fmt.Errorf("value of key %d: %s", key, describe(b, r.fail))
		}
	}
	if r.off != len(b) {
		return fmt.Errorf("extraneous %d bytes after the map", len(b)-r.off)
	}
	return nil
}

// describe names what is wrong with the item head at b[off].
func describe(b []byte, off int) string {
	if off >= len(b) {
		return "truncated"
	}
	major, info := b[off]>>5, b[off]&0x1f
	switch {
	case info == 31:
		return "indefinite length"
	case info > 27:
		return "reserved value"
	case major == 6:
		return "a tag (tags are not used)"
	case major == 7 && info >= 25:
		return "a float (floats are not used)"
	case major == 7:
		return "a simple value other than false, true or null"
	case info >= 24 && len(b)-off-1 < 1<<(info-24):
		return "truncated"
	case info >= 24:
		return "integer or length not in its shortest form"
	}
	return "nested too deep or truncated"
}

// skip reads over one item and everything in it. When it fails, r.fail is
// the offset of the item head at fault.
func (r *reader) skip(depth int) bool {
	r.fail = r.off
	major, arg, ok := r.anyHead()
	if !ok || depth == 0 {
		return false
	}
	switch major {
	case 0, 1:
		return true
	case 2, 3:
		if arg > uint64(len(r.b)-r.off) {
			return false
		}
		r.off += int(arg)
		return true
	case 4, 5:
		n := arg
		if major == 5 {
			if n > uint64(len(r.b)) {
				return false
			}
			n *= 2
		}
		if n > uint64(len(r.b)-r.off) { // each item takes a byte at least
			return false
		}
		for range n {
			if !r.skip(depth - 1) {
				return false
			}
		}
		return true
	case 7:
		return arg >= 20 && arg <= 22 // false, true, null
	}
	return false // tags
}
