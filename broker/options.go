package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
)

// Defaults of Options. A zero field of Options means the default here.
const (
	DefaultDataDir         = "./data"
	DefaultPrefix          = hooks.DefaultPrefix
	DefaultTCPAddr         = "127.0.0.1:1883"
	DefaultHTTPAddr        = "127.0.0.1:9100"
	DefaultConnectTimeout  = 10 * time.Second
	DefaultMaxPacketSize   = 256 * 1024
	DefaultWritesPending   = 256
	DefaultReceiveMaximum  = 128
	DefaultMaxInflight     = 1024
	DefaultTopicAliasMax   = 16
	DefaultSessionExpiry   = 7 * 24 * time.Hour
	DefaultAdminWorkers    = 16
	DefaultAdminQueue      = 256
	DefaultFirstOperator   = "operator"
	DefaultSysTopicSeconds = 10
	databaseFile           = "otamq.db"
	firstOperatorFile      = "first-operator.txt"
)

// Options configure a Broker. The zero value is a working broker on
// loopback with its data under ./data.
type Options struct {
	// DataDir holds the bbolt file and the first operator's credentials.
	// Default DefaultDataDir.
	DataDir string
	// Prefix of the device topics. Default "dm".
	Prefix string

	// TCPAddr is the plain MQTT listener. Default DefaultTCPAddr; "off"
	// disables it.
	TCPAddr string
	// TLSAddr is the MQTT-over-TLS listener; empty disables it. It needs
	// TLSCert and TLSKey; with TLSClientCA, clients may authenticate with a
	// certificate from that CA whose common name is their client ID.
	TLSAddr     string
	TLSCert     string
	TLSKey      string
	TLSClientCA string
	// HTTPAddr serves /metrics and /healthz. Default DefaultHTTPAddr;
	// "off" disables it.
	HTTPAddr string
	// Pprof adds /debug/pprof/ to the HTTP listener.
	Pprof bool

	// ConnectTimeout closes a connection that has not completed its TLS
	// handshake and sent CONNECT within it. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxPacketSize bounds every MQTT packet a client may send. Default
	// DefaultMaxPacketSize.
	MaxPacketSize uint32
	// MaxClients bounds concurrent connections. Default: no bound.
	MaxClients int64
	// WritesPending bounds each client's outbound queue; a full queue drops
	// the message. Default DefaultWritesPending.
	WritesPending int32
	// ReceiveMaximum is how many QoS 1/2 messages a client may have unacked
	// towards the broker. Default DefaultReceiveMaximum.
	ReceiveMaximum uint16
	// MaxInflight bounds the QoS 1/2 messages held for one client. Default
	// DefaultMaxInflight.
	MaxInflight uint16
	// TopicAliasMaximum per client. Default DefaultTopicAliasMax.
	TopicAliasMaximum uint16
	// SessionExpiry bounds how long a disconnected persistent session is
	// kept. Default DefaultSessionExpiry. (Messages themselves never expire
	// unless the publisher set an expiry: mochi's one-day default is off.)
	SessionExpiry time.Duration
	// ReadBufferSize and WriteBufferSize are each connection's buffers.
	// Default: mochi's (2 KiB).
	ReadBufferSize  int
	WriteBufferSize int

	// FlushInterval is how often device status (heartbeats, last seen) is
	// written. Default fleet.DefaultFlushInterval.
	FlushInterval time.Duration
	// AdminWorkers run admin requests concurrently. Default
	// DefaultAdminWorkers.
	AdminWorkers int
	// AdminQueue is how many admin requests may wait. Default
	// DefaultAdminQueue.
	AdminQueue int

	// FirstOperator and FirstOperatorPassword create the first operator of
	// an empty database. Default ID DefaultFirstOperator; with no password
	// one is generated, printed once and written to
	// DataDir/first-operator.txt (mode 0600).
	FirstOperator         string
	FirstOperatorPassword string

	// MaxImageSize bounds a firmware image. Default 64 MiB.
	MaxImageSize uint64
	// MaxBlockSize caps the block size devices may ask for. Default
	// delivery.DefaultMaxBlockSize (32 KiB). The client's Maximum Packet
	// Size caps it further.
	MaxBlockSize int
	// MaxWindow caps the blocks of one request. Default
	// delivery.DefaultMaxWindow.
	MaxWindow int
	// DeviceRate is the bytes per second one device may download. Default
	// delivery.DefaultDeviceRate (512 KiB/s); negative means no limit.
	DeviceRate float64
	// GlobalRate is the bytes per second all downloads together may take.
	// Default 0: no limit.
	GlobalRate float64

	// Rules grant access to topics outside the prefix. Default none: devices
	// may use only their contract topics.
	Rules []hooks.Rule

	// NoSync skips fsync. For tests and benchmarks only: a crash loses
	// acknowledged writes.
	NoSync bool
	// EventStoreFault, when set and returning an error, makes recording a
	// device event fail as if the store had failed. For tests only (the
	// device's side of a store failure). Default nil.
	EventStoreFault func() error
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.DataDir, DefaultDataDir)
	def(&o.Prefix, DefaultPrefix)
	def(&o.TCPAddr, DefaultTCPAddr)
	def(&o.HTTPAddr, DefaultHTTPAddr)
	def(&o.FirstOperator, DefaultFirstOperator)
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	if o.WritesPending <= 0 {
		o.WritesPending = DefaultWritesPending
	}
	if o.ReceiveMaximum == 0 {
		o.ReceiveMaximum = DefaultReceiveMaximum
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.TopicAliasMaximum == 0 {
		o.TopicAliasMaximum = DefaultTopicAliasMax
	}
	if o.SessionExpiry <= 0 {
		o.SessionExpiry = DefaultSessionExpiry
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = fleet.DefaultFlushInterval
	}
	if o.AdminWorkers <= 0 {
		o.AdminWorkers = DefaultAdminWorkers
	}
	if o.AdminQueue <= 0 {
		o.AdminQueue = DefaultAdminQueue
	}
	if o.MaxImageSize == 0 {
		o.MaxImageSize = release.DefaultMaxImageSize
	}
	if o.MaxBlockSize == 0 {
		o.MaxBlockSize = delivery.DefaultMaxBlockSize
	}
	if o.MaxWindow == 0 {
		o.MaxWindow = delivery.DefaultMaxWindow
	}
	if o.DeviceRate == 0 {
		o.DeviceRate = delivery.DefaultDeviceRate
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Validate reports every problem of o at once (after defaults).
func (o Options) Validate() error {
	o = o.withDefaults()
	var errs []error
	if o.TCPAddr == "off" && o.TLSAddr == "" {
		errs = append(errs, errors.New("no MQTT listener: tcp_addr is off and tls_addr is empty"))
	}
	if o.TLSAddr != "" && (o.TLSCert == "" || o.TLSKey == "") {
		errs = append(errs, errors.New("tls_addr needs tls_cert and tls_key"))
	}
	if o.TLSClientCA != "" && o.TLSAddr == "" {
		errs = append(errs, errors.New("tls_client_ca is set but tls_addr is empty"))
	}
	if o.MaxPacketSize < 1024 {
		errs = append(errs, fmt.Errorf("max_packet_size %d is below 1024 bytes", o.MaxPacketSize))
	}
	if o.Prefix == "" || hasWildcardOrSlash(o.Prefix) {
		errs = append(errs, fmt.Errorf("prefix %q must be one topic level without wildcards", o.Prefix))
	}
	if err := fleet.ValidID(o.FirstOperator); err != nil {
		errs = append(errs, fmt.Errorf("first operator: %w", err))
	}
	if o.FirstOperatorPassword != "" && len(o.FirstOperatorPassword) < fleet.MinPasswordLen {
		errs = append(errs, fmt.Errorf("first operator password is shorter than %d characters", fleet.MinPasswordLen))
	}
	if o.MaxBlockSize < 0 || o.MaxBlockSize > int(o.MaxPacketSize) {
		errs = append(errs, fmt.Errorf("max_block_size %d must be between 0 (default) and max_packet_size %d", o.MaxBlockSize, o.MaxPacketSize))
	}
	if o.MaxWindow < 0 || o.MaxWindow > 256 {
		errs = append(errs, fmt.Errorf("max_window %d must be between 0 (default) and 256", o.MaxWindow))
	}
	if o.GlobalRate < 0 {
		errs = append(errs, fmt.Errorf("global_rate %v must not be negative", o.GlobalRate))
	}
	for i, r := range o.Rules {
		if err := r.Validate(o.Prefix); err != nil {
			errs = append(errs, fmt.Errorf("rule %d: %w", i+1, err))
		}
	}
	return errors.Join(errs...)
}

func hasWildcardOrSlash(s string) bool {
	for _, c := range s {
		if c == '+' || c == '#' || c == '/' || c == '$' {
			return true
		}
	}
	return false
}

// Effective renders o with its defaults filled in (without the logger and
// clock), for logs and for comparing configurations.
func Effective(o Options) string {
	o = o.withDefaults()
	o.Logger, o.Now = nil, nil
	if o.FirstOperatorPassword != "" {
		o.FirstOperatorPassword = "(set)"
	}
	return fmt.Sprintf("%+v", o)
}
