package rollout

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Store buckets owned by rollouts.
const (
	bucketRollouts = "rollouts"
	bucketMembers  = "rollout_devices"
)

// State is where a device is in a rollout.
type State uint8

// Device states (docs/ROLLOUTS.md). Every state from Succeeded on is a
// result: the device is done with the rollout.
const (
	Eligible State = iota
	Offered
	Downloading
	Verified
	Installing
	Rebooting
	Trial
	Succeeded
	Failed
	RolledBack
	TimedOut
	Skipped
	Cancelled
	numStates
)

var stateNames = [numStates]string{"eligible", "offered", "downloading", "verified", "installing", "rebooting",
	"trial", "succeeded", "failed", "rolled_back", "timed_out", "skipped", "cancelled"}

// States lists the device states in order.
func States() []string { return stateNames[:] }

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ParseState returns the state named name.
func ParseState(name string) (State, bool) {
	for i, n := range stateNames {
		if n == name {
			return State(i), true
		}
	}
	return 0, false
}

// Done reports whether s is a result.
func (s State) Done() bool { return s >= Succeeded }

// inFlight reports whether a device in s is between its offer and a result.
func (s State) inFlight() bool { return s >= Offered && s < Succeeded }

// installed reports whether a device in s has begun to install (a cancel
// no longer stops it).
func (s State) installed() bool { return s >= Installing && s != Skipped && s != Cancelled }

// Member flags.
const (
	// fHealth: the result is a health failure (reported, or judged by the
	// broker).
	fHealth uint8 = 1 << iota
	// fBroker: the broker judged the result from what it saw.
	fBroker
)

// member is one device in a rollout, in memory. The store holds the same
// and the reason, under the rollout ID and the device ID.
type member struct {
	id     string
	wave   uint8
	state  State
	need   uint8 // stepping stones (bits of the upgrade path) still to take
	tries  uint8 // offers of the current target after the first
	flags  uint8
	hw     uint16 // index in the rollout's hardware names
	region uint16 // index in the rollout's region names
	// Unix nanoseconds: when the state was entered, when the current
	// target was offered, when the device reported health ok (the start of
	// its probation).
	at, offered, okAt int64
	// connects and wills are the device's counts (from the registry) when
	// it began to reboot into the update.
	connects, wills uint32
	// cmdAt is when the last install command went out (memory only).
	cmdAt int64
}

const memberVersion = 1

// encode returns m's stored form, with reason.
func (m *member) encode(reason string) []byte {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	b := make([]byte, 0, 44+len(reason))
	b = append(b, memberVersion, m.wave, byte(m.state), m.need, m.tries, m.flags)
	b = binary.BigEndian.AppendUint16(b, m.hw)
	b = binary.BigEndian.AppendUint16(b, m.region)
	b = binary.BigEndian.AppendUint64(b, uint64(m.at))
	b = binary.BigEndian.AppendUint64(b, uint64(m.offered))
	b = binary.BigEndian.AppendUint64(b, uint64(m.okAt))
	b = binary.BigEndian.AppendUint32(b, m.connects)
	b = binary.BigEndian.AppendUint32(b, m.wills)
	return append(b, reason...)
}

const memberFixed = 42

var errMember = errors.New("bad device record")

// decodeMember parses a stored member of device id.
func decodeMember(id string, b []byte) (*member, string, error) {
	if len(b) < memberFixed || b[0] != memberVersion || State(b[2]) >= numStates {
		return nil, "", fmt.Errorf("%w of %s (%d bytes)", errMember, id, len(b))
	}
	m := &member{id: id, wave: b[1], state: State(b[2]), need: b[3], tries: b[4], flags: b[5],
		hw: binary.BigEndian.Uint16(b[6:]), region: binary.BigEndian.Uint16(b[8:]),
		at: int64(binary.BigEndian.Uint64(b[10:])), offered: int64(binary.BigEndian.Uint64(b[18:])),
		okAt: int64(binary.BigEndian.Uint64(b[26:])), connects: binary.BigEndian.Uint32(b[34:]),
		wills: binary.BigEndian.Uint32(b[38:])}
	return m, string(b[memberFixed:]), nil
}

const maxReason = 256

func memberKey(rollout, id string) []byte {
	k := make([]byte, 0, len(rollout)+1+len(id))
	k = append(k, rollout...)
	k = append(k, 0)
	return append(k, id...)
}

// Rollout states (docs/ROLLOUTS.md).
const (
	StateDraft            = "draft"
	StateAwaitingApproval = "awaiting_approval"
	StateScheduled        = "scheduled"
	StateRunning          = "running"
	StatePaused           = "paused"
	StateCompleted        = "completed"
	StateAborted          = "aborted"
	StateEnded            = "ended"
)

// RolloutStates lists the rollout states.
var RolloutStates = []string{StateDraft, StateAwaitingApproval, StateScheduled, StateRunning, StatePaused,
	StateCompleted, StateAborted, StateEnded}

// finished reports whether a rollout in state st takes no more decisions.
func finished(st string) bool {
	return st == StateCompleted || st == StateAborted || st == StateEnded
}

// Wave states.
const (
	WavePending = "pending"
	WaveRunning = "running"
	WaveBaking  = "baking"
	WavePassed  = "passed"
	WaveHalted  = "halted"  // a threshold or the success share stopped it
	WaveStopped = "stopped" // the rollout ended before it passed
)

// Pause causes.
const (
	PauseOperator  = "operator"
	PauseThreshold = "threshold"
	PauseSuccess   = "success"
)

// record is a rollout as stored.
type record struct {
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	Spec      string    `json:"spec"`
	Release   string    `json:"release"`
	Version   string    `json:"version"`
	Path      []string  `json:"path,omitempty"`
	State     string    `json:"state"`
	Reason    string    `json:"reason,omitempty"`
	PausedBy  string    `json:"paused_by,omitempty"` // a Pause* cause
	CreatedBy string    `json:"created_by"`
	Created   time.Time `json:"created"`
	Approved  *Approval `json:"approved,omitempty"`
	StartedBy string    `json:"started_by,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Ended     time.Time `json:"ended,omitzero"`
	Updated   time.Time `json:"updated"`
	Waves     []wave    `json:"waves"`
	// Hardware and Regions name the slices members refer to by index.
	Hardware []string `json:"hardware"`
	Regions  []string `json:"regions"`
	Alarms   []Alarm  `json:"alarms,omitempty"`
	// Members counts the devices planned (skipped ones included).
	Members int `json:"members"`
}

// Approval is who approved a rollout, and when.
type Approval struct {
	By string    `json:"by"`
	At time.Time `json:"at"`
}

// wave is a wave as stored.
type wave struct {
	Name    string    `json:"name"`
	Percent Percent   `json:"percent,omitempty"`
	State   string    `json:"state"`
	Started time.Time `json:"started,omitzero"`
	// Reached is when the wave's success share was reached (its bake
	// began).
	Reached time.Time `json:"reached,omitzero"`
	Passed  time.Time `json:"passed,omitzero"`
	// Warned records the warnings raised, so that none is raised twice.
	Warned []string `json:"warned,omitempty"`
	// Base holds, per slice ("" the whole wave), the results judged,
	// rolled back and failing health when an operator resumed: the
	// thresholds count from there.
	Base map[string][3]int `json:"base,omitempty"`
}

// Alarm is a threshold warned or crossed.
type Alarm struct {
	Time time.Time `json:"time"`
	Wave string    `json:"wave"`
	// Kind is "rollback" or "health"; Level "warn" or "pause".
	Kind  string `json:"kind"`
	Level string `json:"level"`
	// Slice names the part of the wave ("hardware esp32-v3", "region eu";
	// empty: the whole wave).
	Slice   string  `json:"slice,omitempty"`
	Rate    Percent `json:"rate"`
	Judged  int     `json:"judged"`
	Count   int     `json:"count"`
	Message string  `json:"message"`
}

const maxAlarms = 64

func (r *record) clone() *record {
	c := *r
	c.Waves = append([]wave(nil), r.Waves...)
	for i := range c.Waves {
		c.Waves[i].Warned = append([]string(nil), r.Waves[i].Warned...)
		if b := r.Waves[i].Base; b != nil {
			c.Waves[i].Base = make(map[string][3]int, len(b))
			for k, v := range b {
				c.Waves[i].Base[k] = v
			}
		}
	}
	c.Alarms = append([]Alarm(nil), r.Alarms...)
	return &c
}

func (r *record) encode() ([]byte, error) { return json.Marshal(r) }
