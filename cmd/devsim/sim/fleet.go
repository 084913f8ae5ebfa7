package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// Defaults of Timing: the agent's defaults (agent-c/README.md,
// "Configuration") where the agent has the setting.
const (
	DefaultHeartbeat      = 60 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultBackoffMin     = time.Second
	DefaultBackoffMax     = 60 * time.Second
	DefaultMaxRetries     = 10
	DefaultTrialTimeout   = 120 * time.Second
	DefaultProbation      = 10 * time.Minute
	DefaultMaxReboots     = 3
	DefaultRebootWindow   = 5 * time.Minute
	DefaultMaxWDTResets   = 5
	DefaultWDTWindow      = 10 * time.Minute
	DefaultHealthFail     = 2 * time.Minute
	DefaultNoBroker       = 5 * time.Minute
	DefaultTrialPersist   = 30 * time.Second
	// DefaultEventAck is how long an event in flight waits for its PUBACK
	// before it is published again (OTA_CFG_EVENT_ACK_MS).
	DefaultEventAck = 60 * time.Second
	// DefaultEventRetry is the first wait before an event the broker could
	// not record is sent again, doubling to DefaultEventRetryMax
	// (OTA_CFG_EVENT_RETRY_MS, OTA_CFG_EVENT_RETRY_MAX_MS).
	DefaultEventRetry    = 5 * time.Second
	DefaultEventRetryMax = 60 * time.Second
	// DefaultDigestRetries is how often a download whose digest is wrong is
	// fetched again (OTA_CFG_DIGEST_RETRIES).
	DefaultDigestRetries = 3
	DefaultBlockSize     = 4096
	DefaultWindow        = 4
	// DefaultBoot is how long a simulated reboot keeps a device off.
	DefaultBoot = time.Second
	// DefaultCrashAfter is how long a crash-looping image runs.
	DefaultCrashAfter = 2 * time.Second
	// The agent's reconnect backoff (its POSIX port's): 250 ms doubling
	// to 5 s.
	DefaultConnectBackoffMin = 250 * time.Millisecond
	DefaultConnectBackoffMax = 5 * time.Second
	DefaultKeepAlive         = 30 * time.Second
	DefaultConnectTimeout    = 10 * time.Second
	// DefaultSlowRate is the bytes per second of a Slow device.
	DefaultSlowRate = 8 * 1024
	DefaultPrefix   = "dm"
)

// Timing holds the agent's settings and the simulator's own times. A zero
// field means its default (the Default constants).
type Timing struct {
	Heartbeat      time.Duration
	RequestTimeout time.Duration
	BackoffMin     time.Duration
	BackoffMax     time.Duration
	MaxRetries     int
	TrialTimeout   time.Duration
	Probation      time.Duration
	MaxReboots     int
	RebootWindow   time.Duration
	MaxWDTResets   int
	WDTWindow      time.Duration
	HealthFail     time.Duration
	NoBroker       time.Duration
	// TrialPersist is how often the trial clock is persisted in probation
	// (what a reset keeps of it).
	TrialPersist time.Duration
	// EventAck, EventRetry, EventRetryMax: the event queue's timers.
	EventAck      time.Duration
	EventRetry    time.Duration
	EventRetryMax time.Duration
	// DigestRetries is how often a download is fetched again after a
	// digest mismatch; negative: never.
	DigestRetries int
	// BlockSize and Window are what the device asks for; an offer's
	// suggested block size and the broker's window (offer key 6) lower them.
	BlockSize uint32
	Window    uint32
	// Boot is how long a reboot keeps the device off.
	Boot time.Duration
	// CrashAfter is how long a BootLoop image runs before it crashes.
	CrashAfter time.Duration
	// ConnectBackoffMin and ConnectBackoffMax bound the wait before a new
	// connection attempt (doubling, with ±25 % jitter).
	ConnectBackoffMin time.Duration
	ConnectBackoffMax time.Duration
	// KeepAlive of the MQTT connection.
	KeepAlive time.Duration
	// ConnectTimeout bounds the TCP connect, the CONNACK and each SUBACK.
	ConnectTimeout time.Duration
}

func (t Timing) withDefaults() Timing {
	d := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	n := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	d(&t.Heartbeat, DefaultHeartbeat)
	d(&t.RequestTimeout, DefaultRequestTimeout)
	d(&t.BackoffMin, DefaultBackoffMin)
	d(&t.BackoffMax, DefaultBackoffMax)
	n(&t.MaxRetries, DefaultMaxRetries)
	d(&t.TrialTimeout, DefaultTrialTimeout)
	d(&t.Probation, DefaultProbation)
	n(&t.MaxReboots, DefaultMaxReboots)
	d(&t.RebootWindow, DefaultRebootWindow)
	n(&t.MaxWDTResets, DefaultMaxWDTResets)
	d(&t.WDTWindow, DefaultWDTWindow)
	d(&t.HealthFail, DefaultHealthFail)
	d(&t.NoBroker, DefaultNoBroker)
	d(&t.TrialPersist, DefaultTrialPersist)
	d(&t.EventAck, DefaultEventAck)
	d(&t.EventRetry, DefaultEventRetry)
	d(&t.EventRetryMax, DefaultEventRetryMax)
	switch {
	case t.DigestRetries == 0:
		t.DigestRetries = DefaultDigestRetries
	case t.DigestRetries < 0:
		t.DigestRetries = 0
	}
	d(&t.Boot, DefaultBoot)
	d(&t.CrashAfter, DefaultCrashAfter)
	d(&t.ConnectBackoffMin, DefaultConnectBackoffMin)
	d(&t.ConnectBackoffMax, DefaultConnectBackoffMax)
	d(&t.KeepAlive, DefaultKeepAlive)
	d(&t.ConnectTimeout, DefaultConnectTimeout)
	if t.BlockSize == 0 {
		t.BlockSize = DefaultBlockSize
	}
	if t.Window == 0 {
		t.Window = DefaultWindow
	}
	if t.MaxReboots > bootLogLen-1 {
		t.MaxReboots = bootLogLen - 1 // as the agent caps it
	}
	if t.MaxWDTResets > bootLogLen-1 {
		t.MaxWDTResets = bootLogLen - 1
	}
	if t.BackoffMax < t.BackoffMin {
		t.BackoffMax = t.BackoffMin
	}
	if t.EventRetryMax < t.EventRetry {
		t.EventRetryMax = t.EventRetry
	}
	if t.ConnectBackoffMax < t.ConnectBackoffMin {
		t.ConnectBackoffMax = t.ConnectBackoffMin
	}
	return t
}

// Config configures a Fleet. URL is required, and Keys unless Load is set.
type Config struct {
	// URL of the broker: mqtt://host:port.
	URL string
	// Prefix of the device topics. Default DefaultPrefix.
	Prefix string
	// Keys are the trusted release keys.
	Keys manifest.KeySet
	// Seed makes a run reproducible: jitter, heartbeat phases, RSSI and
	// free heap of every device come from it.
	Seed   uint64
	Timing Timing
	// V311 connects with MQTT 3.1.1 instead of 5.
	V311 bool
	// ConnectRate bounds connection attempts per second, all devices
	// together (a token bucket with a burst of one second's worth). Zero:
	// no bound.
	ConnectRate float64
	// Load makes every device a load generator: it connects, sends its
	// birth and heartbeats, and nothing else (no subscriptions, no OTA).
	Load bool
	// SlowRate is a Slow device's bytes per second unless its spec says.
	// Default DefaultSlowRate.
	SlowRate int
	// Offline is an OfflineWindow device's daily window unless its spec
	// says. Default 02:00-04:00.
	Offline Window
	// WrongHardware is what a WrongHardware device without a hardware of
	// its own reports. Default DefaultWrongHardware.
	WrongHardware string
	// OldVersion is what a TooOld device without a version of its own
	// runs. Default DefaultOldVersion.
	OldVersion string
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger. Default: logs are discarded.
	Logger *slog.Logger
}

// DeviceSpec is one simulated device. ID and, for token authentication,
// Token are required; a zero field means the default noted.
type DeviceSpec struct {
	ID    string `json:"id"`
	Token string `json:"token,omitempty"`
	// Profile. Default Healthy.
	Profile Profile `json:"profile,omitempty"`
	// Hardware it reports. Default "esp32-v2".
	Hardware string `json:"hardware,omitempty"`
	// Version of its factory image. Default "1.0.0".
	Version string `json:"version,omitempty"`
	// SecureVersion of its factory image. Default 0.
	SecureVersion uint32 `json:"secure_version,omitempty"`
	// Bootloader version. Default "2.1.0".
	Bootloader string `json:"bootloader,omitempty"`
	// UTCOffsetMinutes it reports in its birth (its local time zone).
	UTCOffsetMinutes int16 `json:"utc_offset_minutes,omitempty"`
	// Connectivity it reports. Default wifi.
	Connectivity wire.Connectivity `json:"connectivity,omitempty"`
	// AllowDowngrade lets it take older versions (the agent's
	// allow_downgrade).
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
	// FaultVersions limits the profile's update misbehaviour to images of
	// these versions. Default: every version.
	FaultVersions []string `json:"fault_versions,omitempty"`
	// SlowRate (Slow) in bytes per second. Default Config.SlowRate.
	SlowRate int `json:"slow_rate,omitempty"`
	// Offline (OfflineWindow) in local time. Default Config.Offline.
	Offline *Window `json:"offline,omitempty"`
}

// Defaults of DeviceSpec.
const (
	DefaultHardware   = "esp32-v2"
	DefaultVersion    = "1.0.0"
	DefaultBootloader = "2.1.0"
	// DefaultWrongHardware is the hardware of WrongHardware devices.
	DefaultWrongHardware = "esp32-c3"
	// DefaultOldVersion is the version of TooOld devices.
	DefaultOldVersion = "0.9.0"
	// AgentVersion is what simulated devices report as their agent.
	AgentVersion = "devsim-0.1.0"
)

// Fleet is a set of simulated devices. Add devices, Start, and Stop when
// done. Its methods are safe for concurrent use.
type Fleet struct {
	cfg    Config
	t      Timing
	addr   string
	log    *slog.Logger
	now    func() time.Time
	dial   func(ctx context.Context, c dialConfig, h linkHandler) (link, error)
	ctx    context.Context // ends at Stop: cancels connection attempts
	cancel context.CancelFunc
	wg     sync.WaitGroup // connection attempts and re-subscriptions

	limMu    sync.Mutex // guards limNext
	limNext  time.Time  // when the next connection attempt may start
	limBurst time.Duration

	mu      sync.RWMutex // guards devs, byID, started, stopped
	devs    []*device
	byID    map[string]*device
	started bool
	stopped bool

	c counters
}

// counters are fleet-wide totals, updated atomically.
type counters struct {
	connects, connectFailures, refused, births, heartbeats, events, eventsLost atomic.Uint64
	offers, rejected, blocks, bytes, requests, commits, rollbacks              atomic.Uint64
}

// New returns an empty fleet.
func New(cfg Config) (*Fleet, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" || (u.Scheme != "mqtt" && u.Scheme != "tcp") {
		return nil, fmt.Errorf("broker URL %q: want mqtt://host:port", cfg.URL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr += ":1883"
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if len(cfg.Keys) == 0 && !cfg.Load {
		return nil, errors.New("no trusted release key: devices could accept no update")
	}
	if cfg.SlowRate <= 0 {
		cfg.SlowRate = DefaultSlowRate
	}
	if cfg.Offline == (Window{}) {
		cfg.Offline = Window{Start: 2 * time.Hour, End: 4 * time.Hour}
	}
	if cfg.WrongHardware == "" {
		cfg.WrongHardware = DefaultWrongHardware
	}
	if cfg.OldVersion == "" {
		cfg.OldVersion = DefaultOldVersion
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	f := &Fleet{cfg: cfg, t: cfg.Timing.withDefaults(), addr: addr, log: cfg.Logger, now: cfg.Now,
		byID: map[string]*device{}}
	f.dial = dialV5
	if cfg.V311 {
		f.dial = dial311
	}
	if cfg.ConnectRate > 0 {
		f.limBurst = time.Second
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f, nil
}

// Add adds devices. It may be called before or after Start; a device added
// after Start boots at once.
func (f *Fleet) Add(specs ...DeviceSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return errors.New("fleet stopped")
	}
	var problems []error
	for _, s := range specs {
		if err := fleet.ValidID(s.ID); err != nil {
			problems = append(problems, err)
			continue
		}
		if _, dup := f.byID[s.ID]; dup {
			problems = append(problems, fmt.Errorf("device %s given twice", s.ID))
			continue
		}
		if err := f.check(&s); err != nil {
			problems = append(problems, fmt.Errorf("device %s: %w", s.ID, err))
			continue
		}
		d := newDevice(f, s)
		f.devs = append(f.devs, d)
		f.byID[s.ID] = d
		if f.started {
			d.start()
		}
	}
	return errors.Join(problems...)
}

// check fills in s's defaults and checks its values.
func (f *Fleet) check(s *DeviceSpec) error {
	if s.Hardware == "" {
		s.Hardware = DefaultHardware
		if s.Profile == WrongHardware {
			s.Hardware = f.cfg.WrongHardware
		}
	}
	if s.Version == "" {
		s.Version = DefaultVersion
		if s.Profile == TooOld {
			s.Version = f.cfg.OldVersion
		}
	}
	if s.Bootloader == "" {
		s.Bootloader = DefaultBootloader
	}
	var problems []error
	if s.Profile >= profileCount {
		problems = append(problems, fmt.Errorf("profile %d is not defined", s.Profile))
	}
	if err := wire.CheckVersion(s.Version); err != nil {
		problems = append(problems, fmt.Errorf("version: %w", err))
	} else if len(s.Version) > maxVersionLen {
		problems = append(problems, fmt.Errorf("version %q is longer than the agent's %d bytes", s.Version, maxVersionLen))
	}
	if err := wire.CheckVersion(s.Bootloader); err != nil {
		problems = append(problems, fmt.Errorf("bootloader: %w", err))
	}
	if len(s.Hardware) > wire.MaxHardwareLen {
		problems = append(problems, fmt.Errorf("hardware %q is longer than %d bytes", s.Hardware, wire.MaxHardwareLen))
	}
	if s.UTCOffsetMinutes < -14*60 || s.UTCOffsetMinutes > 14*60 {
		problems = append(problems, fmt.Errorf("UTC offset %d minutes is out of range", s.UTCOffsetMinutes))
	}
	if s.Connectivity > wire.ConnViaGateway {
		problems = append(problems, fmt.Errorf("connectivity %d is not defined", s.Connectivity))
	}
	if s.SlowRate < 0 {
		problems = append(problems, fmt.Errorf("slow rate %d is negative", s.SlowRate))
	}
	if s.Offline != nil {
		if err := s.Offline.Validate(); err != nil {
			problems = append(problems, err)
		}
	}
	return errors.Join(problems...)
}

// Start boots every device; they connect as ConnectRate allows.
func (f *Fleet) Start() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started || f.stopped {
		return
	}
	f.started = true
	for _, d := range f.devs {
		d.start()
	}
}

// Stop ends the simulation: every connected device disconnects with a
// DISCONNECT, every timer stops, and Stop waits for every goroutine of the
// fleet (connection attempts, MQTT clients) until ctx ends.
func (f *Fleet) Stop(ctx context.Context) error {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return nil
	}
	f.stopped = true
	devs := append([]*device(nil), f.devs...)
	f.mu.Unlock()
	f.cancel()

	// Disconnect in parallel: each waits for its client's goroutines.
	var links []link
	var wg sync.WaitGroup
	work := make(chan link)
	for range 32 {
		wg.Go(func() {
			for l := range work {
				l.disconnect()
			}
		})
	}
	for _, d := range devs {
		cur, old := d.stop()
		links = append(links, old...)
		if cur != nil {
			links = append(links, cur)
			work <- cur
		}
	}
	close(work)
	wg.Wait()

	waited := make(chan struct{})
	go func() {
		f.wg.Wait()
		for _, l := range links {
			<-l.done()
		}
		close(waited)
	}()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("devices still stopping: %w", ctx.Err())
	}
}

// reserve returns how long a connection attempt starting now must wait
// for the connect rate.
func (f *Fleet) reserve(now time.Time) time.Duration {
	if f.cfg.ConnectRate <= 0 {
		return 0
	}
	f.limMu.Lock()
	defer f.limMu.Unlock()
	step := time.Duration(float64(time.Second) / f.cfg.ConnectRate)
	if floor := now.Add(step - f.limBurst); f.limNext.Before(floor) { // a burst of limBurst's worth
		f.limNext = floor
	}
	at := f.limNext
	f.limNext = f.limNext.Add(step)
	if at.Before(now) {
		return 0
	}
	return at.Sub(now)
}

// go runs fn in a goroutine the fleet waits for at Stop.
func (f *Fleet) spawn(fn func()) { f.wg.Go(fn) }

// Device returns a snapshot of device id.
func (f *Fleet) Device(id string) (Snapshot, bool) {
	f.mu.RLock()
	d := f.byID[id]
	f.mu.RUnlock()
	if d == nil {
		return Snapshot{}, false
	}
	return d.snapshot(), true
}

// Devices returns a snapshot of every device, by ID.
func (f *Fleet) Devices() []Snapshot {
	f.mu.RLock()
	devs := append([]*device(nil), f.devs...)
	f.mu.RUnlock()
	out := make([]Snapshot, len(devs))
	for i, d := range devs {
		out[i] = d.snapshot()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Len returns the number of devices.
func (f *Fleet) Len() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.devs)
}

// Stats counts the fleet's devices by what they are doing now, and totals
// since New.
type Stats struct {
	Devices int `json:"devices"`
	// Connected devices (MQTT session up); Up devices are running (not in
	// a reboot, not dead); Dead devices will never run again (Silent).
	Connected int `json:"connected"`
	Up        int `json:"up"`
	Dead      int `json:"dead"`
	// Seen devices have connected at least once.
	Seen int `json:"seen"`
	// States counts devices by their OTA state (names as in wire.OTAState).
	States map[string]int `json:"states"`
	// Versions counts devices by the firmware version they run.
	Versions map[string]int `json:"versions"`
	Profiles map[string]int `json:"profiles"`

	Connects        uint64 `json:"connects"`
	ConnectFailures uint64 `json:"connect_failures"`
	Refused         uint64 `json:"refused"` // CONNACKs that refused
	Births          uint64 `json:"births"`
	Heartbeats      uint64 `json:"heartbeats"`
	Events          uint64 `json:"events"`      // events handed to the broker
	EventsLost      uint64 `json:"events_lost"` // events a reset lost (RAM queue) or the queue dropped
	Offers          uint64 `json:"offers"`      // offer messages received
	Rejected        uint64 `json:"rejected"`    // offers refused (event 15)
	Requests        uint64 `json:"block_requests"`
	Blocks          uint64 `json:"blocks"`
	Bytes           uint64 `json:"block_bytes"`
	Commits         uint64 `json:"commits"`
	Rollbacks       uint64 `json:"rollbacks"` // rollbacks completed (event 14)
}

// Stats returns the fleet's counts now.
func (f *Fleet) Stats() Stats {
	f.mu.RLock()
	devs := append([]*device(nil), f.devs...)
	f.mu.RUnlock()
	s := Stats{Devices: len(devs), States: map[string]int{}, Versions: map[string]int{}, Profiles: map[string]int{}}
	for _, d := range devs {
		d.count(&s)
	}
	c := &f.c
	s.Connects, s.ConnectFailures, s.Refused = c.connects.Load(), c.connectFailures.Load(), c.refused.Load()
	s.Births, s.Heartbeats, s.Events, s.EventsLost = c.births.Load(), c.heartbeats.Load(), c.events.Load(), c.eventsLost.Load()
	s.Offers, s.Rejected, s.Requests, s.Blocks, s.Bytes = c.offers.Load(), c.rejected.Load(), c.requests.Load(), c.blocks.Load(), c.bytes.Load()
	s.Commits, s.Rollbacks = c.commits.Load(), c.rollbacks.Load()
	return s
}

// deviceRand returns the random source of device id: it depends only on
// the seed and the ID.
func (f *Fleet) deviceRand(id string) *rand.Rand {
	return rand.New(rand.NewPCG(f.cfg.Seed, hashString(id)))
}
