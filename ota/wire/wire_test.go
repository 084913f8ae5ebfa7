package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The examples of docs/PROTOCOL.md, byte for byte.
const (
	designBirth     = "ab0165312e322e33026865737033322d76320365322e312e3004000505060107050865302e332e3009000a183c0b02"
	designHeartbeat = "a601190e1002070300041a0001d4c005383c0600"
	designBlock     = "a401182a02192000031a001000000444deadbeef"
)

func TestDesignExamples(t *testing.T) {
	birth := Birth{FirmwareVersion: "1.2.3", Hardware: "esp32-v2", Bootloader: "2.1.0", Slot: 0, BootReason: BootOTAReboot,
		BootsSinceCommit: 1, OTAState: StateTrial, AgentVersion: "0.3.0", Connectivity: ConnWiFi, UTCOffsetMinutes: 60, SecureVersion: 2}
	if got := hex.EncodeToString(birth.Encode()); got != designBirth {
		t.Errorf("birth encodes as\n%s\nwant\n%s", got, designBirth)
	}
	gotBirth, err := DecodeBirth(unhex(t, designBirth))
	if err != nil || !reflect.DeepEqual(gotBirth, birth) {
		t.Errorf("DecodeBirth = %+v, %v", gotBirth, err)
	}

	// key 12 (the replay guard, an otamq extension) after the contract's
	// keys, as the C agent sends it; absent when 0
	guarded := birth
	guarded.ReplayGuard = 17
	if got := hex.EncodeToString(guarded.Encode()); got != "ac"+designBirth[2:]+"0c11" {
		t.Errorf("birth with a replay guard encodes as %s", got)
	}
	if b, err := DecodeBirth(guarded.Encode()); err != nil || b.ReplayGuard != 17 {
		t.Errorf("DecodeBirth(key 12) = %+v, %v", b, err)
	}

	hb := Heartbeat{UptimeSeconds: 3600, HealthFlags: 7, WatchdogResets: 0, FreeHeap: 120000, RSSI: -61, OTAState: StateIdle}
	if got := hex.EncodeToString(hb.Encode()); got != designHeartbeat {
		t.Errorf("heartbeat encodes as %s, want %s", got, designHeartbeat)
	}
	gotHB, err := DecodeHeartbeat(unhex(t, designHeartbeat))
	if err != nil || !reflect.DeepEqual(gotHB, hb) {
		t.Errorf("DecodeHeartbeat = %+v, %v", gotHB, err)
	}

	data := unhex(t, "deadbeef")
	blk := AppendBlock(nil, 42, 8192, 1048576, data)
	if got := hex.EncodeToString(blk); got != designBlock {
		t.Errorf("AppendBlock = %s, want %s", got, designBlock)
	}
	if got := hex.EncodeToString(encode(Block{RequestID: 42, Offset: 8192, ImageSize: 1048576, Data: data})); got != designBlock {
		t.Errorf("Block struct encodes as %s, want %s", got, designBlock)
	}
	b, be, err := DecodeBlock(blk, 4096)
	if err != nil || be != nil || b.RequestID != 42 || b.Offset != 8192 || b.ImageSize != 1048576 || !bytes.Equal(b.Data, data) {
		t.Errorf("DecodeBlock = %+v %+v %v", b, be, err)
	}

	ber := BlockError{RequestID: 42, Offset: 8192, Code: BlockRateLimited, RetryAfterMS: 250, Message: "rate limited"}
	b, be, err = DecodeBlock(ber.Encode(), 4096)
	if err != nil || b != nil || !reflect.DeepEqual(*be, ber) {
		t.Errorf("DecodeBlock(error) = %+v %+v %v", b, be, err)
	}

	ev := Event{Code: EvDownloadCompleted, RolloutID: "r-2025-11-24", TargetVersion: "1.2.4", Progress: 100, DeviceTime: 1764000000}
	gotEv, err := DecodeEvent(ev.Encode())
	if err != nil || gotEv != ev {
		t.Errorf("event round trip = %+v, %v", gotEv, err)
	}
	cmd := Command{Verb: VerbInstall, RolloutID: "r-2025-11-24"}
	if got := hex.EncodeToString(cmd.Encode()); got != "a30101026c722d323032352d31312d32340300" {
		t.Errorf("command encodes as %s", got)
	}
}

// AppendBlock must produce the deterministic encoding for every size class
// of its integers.
func TestAppendBlockMatchesStructEncoding(t *testing.T) {
	for _, v := range []uint64{0, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, 1<<64 - 1} {
		data := bytes.Repeat([]byte{7}, int(v%300))
		want := encode(Block{RequestID: uint32(v), Offset: v, ImageSize: v, Data: data})
		if got := AppendBlock(nil, uint32(v), v, v, data); !bytes.Equal(got, want) {
			t.Errorf("v=%d: AppendBlock\n%x\nwant\n%x", v, got, want)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	okBirth := unhex(t, designBirth)
	cases := []struct {
		name string
		in   []byte
		dec  func([]byte) error
		want string
	}{
		{"empty birth", nil, birthErr, "empty"},
		{"oversize birth", bytes.Repeat([]byte{0}, MaxBirthSize+1), birthErr, "limit"},
		{"not a map", unhex(t, "8101"), birthErr, "not a map"},
		{"duplicate key", unhex(t, "a2 0165312e322e33 0165312e322e33"), birthErr, "duplicate"},
		{"indefinite map", unhex(t, "bf0165312e322e33ff"), birthErr, "indefinite"},
		{"tag", unhex(t, "c1a0"), birthErr, "tag"},
		{"wrong type version", unhex(t, "a2 0101 026161"), birthErr, "cannot unmarshal"},
		{"missing hardware", unhex(t, "a1 0165312e322e33"), birthErr, "hardware (2) missing"},
		{"bad semver", unhex(t, "a2 0163312e32 026161"), birthErr, "semantic version"},
		{"slot 2", unhex(t, "a3 0165312e322e33 026161 0402"), birthErr, "slot"},
		{"ota state 9", unhex(t, "a3 0165312e322e33 026161 0709"), birthErr, "ota state"},
		{"float", unhex(t, "a3 0165312e322e33 026161 04f93c00"), birthErr, "float"},
		{"negative slot", unhex(t, "a3 0165312e322e33 026161 0420"), birthErr, "cannot unmarshal"},
		{"trailing bytes", append(append([]byte{}, okBirth...), 0), birthErr, "extraneous"},
		{"invalid utf8", unhex(t, "a2 0165312e322e33 0261ff"), birthErr, "UTF-8"},
		{"hb positive rssi", unhex(t, "a1 0505"), hbErr, "rssi"},
		{"hb state", unhex(t, "a1 0610"), hbErr, "ota state"},
		{"hb overflow", unhex(t, "a1 031b0000000100000000"), hbErr, "overflows"},
		{"event code 0", unhex(t, "a1 0100"), evErr, "code (1)"},
		{"event code 16", unhex(t, "a1 0110"), evErr, "code (1)"},
		{"event progress", unhex(t, "a2 0104 041865"), evErr, "progress"},
		{"event detail long", (Event{Code: 1, Detail: strings.Repeat("x", 129)}).Encode(), evErr, "detail"},
		{"blockreq short digest", unhex(t, "a5 014100 0200 03190400 0401 0501"), brErr, "digest"},
		{"blockreq zero count", (BlockRequest{Digest: make([]byte, 32), Size: 1}).Encode(), brErr, "count"},
		{"command verb 9", unhex(t, "a1 0109"), cmdErr, "verb"},
		// Keys are unsigned integers from 1; integers, lengths and keys in
		// their shortest form (a heartbeat of nothing but such keys once
		// decoded as all zeros).
		{"hb text key", unhex(t, "a1 6161 01"), hbErr, "not an unsigned integer"},
		{"hb negative key", unhex(t, "a1 20 01"), hbErr, "not an unsigned integer"},
		{"hb key 0", unhex(t, "a1 00 01"), hbErr, "key 0"},
		{"hb non-minimal key", unhex(t, "a1 1801 01"), hbErr, "shortest form"},
		{"hb non-minimal value", unhex(t, "a1 01 1900ff"), hbErr, "shortest form"},
		{"hb non-minimal map length", unhex(t, "b80101 01"), hbErr, "shortest form"},
		{"birth non-minimal text length", unhex(t, "a2 01780531 2e322e33 026161"), birthErr, "shortest form"},
		{"event text key", unhex(t, "a2 0101 6178 01"), evErr, "not an unsigned integer"},
		{"unknown key with a float", unhex(t, "a2 0101 18 63 f93c00"), evErr, "float"},
		{"unknown key with a tag", unhex(t, "a2 0101 1863 c100"), evErr, "tag"},
		{"unknown key nested too deep", unhex(t, "a2 0101 1863 8181818181 00"), evErr, "nested too deep"},
		{"blockreq truncated", unhex(t, "a5 0158"), brErr, "truncated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.dec(c.in)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestDecodeAcceptsAnyOrderAndUnknownKeys(t *testing.T) {
	// {40: "future", 2: "esp32-v2", 1: "1.0.0"}: unordered, with a key from a
	// later contract version.
	in := unhex(t, "a3 182866667574757265 026865737033322d7632 0165312e302e30")
	b, err := DecodeBirth(in)
	if err != nil {
		t.Fatal(err)
	}
	if b.FirmwareVersion != "1.0.0" || b.Hardware != "esp32-v2" {
		t.Fatalf("decoded %+v", b)
	}
	off := uint64(4096)
	hb, err := DecodeHeartbeat(Heartbeat{OTAState: StateDownloading, DownloadOffset: &off}.Encode())
	if err != nil || hb.DownloadOffset == nil || *hb.DownloadOffset != 4096 {
		t.Fatalf("heartbeat with offset: %+v %v", hb, err)
	}
}

func TestDecodeBlockBounds(t *testing.T) {
	if _, _, err := DecodeBlock(AppendBlock(nil, 1, 0, 10, make([]byte, 11)), 64); err == nil {
		t.Error("block past image size accepted")
	}
	if _, _, err := DecodeBlock(AppendBlock(nil, 1, 0, 100, make([]byte, 65)), 64); err == nil {
		t.Error("block larger than maxData accepted")
	}
	if _, _, err := DecodeBlock(unhex(t, "a2 0101 0200"), 64); err == nil {
		t.Error("block without data or error accepted")
	}
}

func birthErr(b []byte) error { _, err := DecodeBirth(b); return err }
func hbErr(b []byte) error    { _, err := DecodeHeartbeat(b); return err }
func evErr(b []byte) error    { _, err := DecodeEvent(b); return err }
func brErr(b []byte) error    { _, err := DecodeBlockRequest(b); return err }
func cmdErr(b []byte) error   { _, err := DecodeCommand(b); return err }
