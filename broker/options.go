package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"time"

	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/httpapi"
	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/clock"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/login"
	"github.com/otamq/otamq/ota/release"
)

// Defaults of Options. A zero field of Options means the default here.
const (
	DefaultDataDir         = "./data"
	DefaultPrefix          = access.DefaultPrefix
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
	// AnonymousTCP and AnonymousTLS let clients whose ID is not registered
	// connect to that listener without credentials, as anonymous clients:
	// they get only the rules that name the role "anonymous", outside the
	// prefix, never $SYS, an admin verb or a registered ID. Off by default:
	// turn it on only for a listener that untrusted clients cannot reach,
	// or for general MQTT traffic you mean to be open.
	AnonymousTCP bool
	AnonymousTLS bool
	// HTTPAddr serves /metrics and /healthz. Default DefaultHTTPAddr;
	// "off" disables it.
	HTTPAddr string
	// Pprof adds /debug/pprof/ to the HTTP listener.
	Pprof bool
	// APIOff turns the HTTP API (/api/v1/, package httpapi) off; the
	// listener then serves only /metrics and /healthz. Default: on,
	// wherever the HTTP listener is.
	APIOff bool
	// HTTPTLS serves the HTTP listener (API, /metrics, /healthz) over TLS
	// with the certificate and key of MQTT over TLS (TLSCert, TLSKey).
	HTTPTLS bool
	// SessionTTL is how long an HTTP API login lasts. Default
	// login.DefaultTTL (12h).
	SessionTTL time.Duration
	// MaxSessionsPerOperator bounds one operator's HTTP API sessions; a
	// login beyond it ends its oldest. Default login.DefaultMaxPerOperator
	// (16).
	MaxSessionsPerOperator int
	// MaxEventStreams bounds the open event streams of the HTTP API.
	// Default httpapi.DefaultMaxStreams (64).
	MaxEventStreams int
	// HTTPRequestTimeout bounds reading an HTTP API request's body and
	// writing its reply, and each write of an event stream (a stream
	// itself lasts). Default httpapi.DefaultRequestTimeout (30s).
	HTTPRequestTimeout time.Duration
	// HTTPMaxInflight bounds the authenticated HTTP API requests under
	// way at once (event streams apart); more are refused 503. Default
	// httpapi.DefaultMaxInflight (64).
	HTTPMaxInflight int
	// StreamQueue is how many events may wait for one event stream of the
	// HTTP API; a stream further behind is dropped. Default
	// httpapi.DefaultStreamQueue (256).
	StreamQueue int
	// StreamHeartbeat is the period of an event stream's keep-alive
	// comments. Default httpapi.DefaultHeartbeat (15s).
	StreamHeartbeat time.Duration

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
	// MaxSubscriptions bounds the subscriptions of one client, and
	// MaxGatewaySubscriptions those of a gateway (three per child).
	// Defaults hooks.DefaultMaxSubscriptions (100) and
	// hooks.DefaultMaxGatewaySubscriptions (30,000).
	MaxSubscriptions        int
	MaxGatewaySubscriptions int
	// MaxFilterLevels and MaxFilterLength bound one subscription filter.
	// Defaults hooks.DefaultMaxFilterLevels (16) and
	// hooks.DefaultMaxFilterLength (1024 bytes).
	MaxFilterLevels int
	MaxFilterLength int
	// OperatorSessionExpiry bounds the session expiry of operators and
	// observers. Default hooks.DefaultOperatorSessionExpiry (1h).
	OperatorSessionExpiry time.Duration
	// ReadBufferSize and WriteBufferSize are each connection's buffers.
	// Default: mochi's (2 KiB).
	ReadBufferSize  int
	WriteBufferSize int

	// FlushInterval is how often device status (heartbeats, last seen) is
	// written. Default fleet.DefaultFlushInterval.
	FlushInterval time.Duration
	// ChildTimeout is how long a gateway's child may go unheard, its
	// gateway online, before it no longer counts as online. Default
	// fleet.DefaultChildTimeout.
	ChildTimeout time.Duration
	// RolloutTick is the period of the rollout engine's evaluation pass
	// (it also runs when devices report). Default rollout.DefaultTick.
	RolloutTick time.Duration
	// AdminWorkers run admin requests concurrently. Default
	// DefaultAdminWorkers.
	AdminWorkers int
	// AdminQueue is how many admin requests may wait. Default
	// DefaultAdminQueue.
	AdminQueue int
	// AdminRate is how many admin requests per second one operator or
	// observer (all its sessions together) may send, with bursts of
	// AdminBurst; beyond it a request is refused with "rate_limited" and
	// the time to wait. Default admin.DefaultRate (100) and
	// admin.DefaultBurst (200); a negative AdminRate: no limit.
	AdminRate  float64
	AdminBurst int
	// AuditMaxRecords and AuditMaxAge bound the audit log: the oldest
	// records go once there are more, or once they are older. Default
	// audit.DefaultMaxRecords (1,000,000) and audit.DefaultMaxAge (90
	// days); negative: no limit.
	AuditMaxRecords int
	AuditMaxAge     time.Duration

	// FirstOperator and FirstOperatorPassword create the first operator of
	// an empty database. Default ID DefaultFirstOperator; with no password
	// one is generated, printed once and written to
	// DataDir/first-operator.txt (mode 0600).
	FirstOperator         string
	FirstOperatorPassword string

	// MaxImageSize bounds a firmware image. Default 64 MiB.
	MaxImageSize uint64
	// MaxBlockSize caps the block size devices may ask for. Default
	// delivery.DefaultMaxBlockSize (32 KiB), or MaxPacketSize if that is
	// smaller. The client's Maximum Packet Size caps it further.
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
	Rules []access.Rule

	// EventStoreFault, when set, is called in the transaction that records
	// each device event, and an error from it fails that transaction as a
	// store failure would (the device is told to retry). A failpoint for
	// tests; never set it in production.
	EventStoreFault func() error

	// NoSync skips fsync. For tests and benchmarks only: a crash loses
	// acknowledged writes.
	NoSync bool
	// Logger. Default slog.Default().
	Logger *slog.Logger
	// Clock is the domain's time (registry, releases, delivery, admin, and
	// later the rollout engine). Default clock.System(); tests give a
	// clock.Fake.
	Clock clock.Clock
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
	if o.MaxSubscriptions == 0 {
		o.MaxSubscriptions = hooks.DefaultMaxSubscriptions
	}
	if o.MaxGatewaySubscriptions == 0 {
		o.MaxGatewaySubscriptions = hooks.DefaultMaxGatewaySubscriptions
	}
	if o.MaxFilterLevels == 0 {
		o.MaxFilterLevels = hooks.DefaultMaxFilterLevels
	}
	if o.MaxFilterLength == 0 {
		o.MaxFilterLength = hooks.DefaultMaxFilterLength
	}
	if o.OperatorSessionExpiry == 0 {
		o.OperatorSessionExpiry = hooks.DefaultOperatorSessionExpiry
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = fleet.DefaultFlushInterval
	}
	if o.ChildTimeout <= 0 {
		o.ChildTimeout = fleet.DefaultChildTimeout
	}
	if o.AdminWorkers <= 0 {
		o.AdminWorkers = DefaultAdminWorkers
	}
	if o.AdminQueue <= 0 {
		o.AdminQueue = DefaultAdminQueue
	}
	if o.AdminRate == 0 {
		o.AdminRate = admin.DefaultRate
	}
	if o.AdminBurst == 0 {
		o.AdminBurst = admin.DefaultBurst
	}
	if o.AuditMaxRecords == 0 {
		o.AuditMaxRecords = audit.DefaultMaxRecords
	}
	if o.AuditMaxAge == 0 {
		o.AuditMaxAge = audit.DefaultMaxAge
	}
	if o.MaxImageSize == 0 {
		o.MaxImageSize = release.DefaultMaxImageSize
	}
	if o.SessionTTL == 0 {
		o.SessionTTL = login.DefaultTTL
	}
	if o.MaxSessionsPerOperator == 0 {
		o.MaxSessionsPerOperator = login.DefaultMaxPerOperator
	}
	if o.MaxEventStreams == 0 {
		o.MaxEventStreams = httpapi.DefaultMaxStreams
	}
	if o.HTTPMaxInflight == 0 {
		o.HTTPMaxInflight = httpapi.DefaultMaxInflight
	}
	if o.HTTPRequestTimeout == 0 {
		o.HTTPRequestTimeout = httpapi.DefaultRequestTimeout
	}
	if o.StreamHeartbeat == 0 {
		o.StreamHeartbeat = httpapi.DefaultHeartbeat
	}
	if o.MaxBlockSize == 0 {
		o.MaxBlockSize = min(delivery.DefaultMaxBlockSize, int(o.MaxPacketSize))
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
	if o.Clock == nil {
		o.Clock = clock.System()
	}
	return o
}

// Validate reports every problem of o at once (after defaults): each is a
// *SettingError naming the configuration file's key, joined with
// errors.Join.
func (o Options) Validate() error {
	o = o.withDefaults()
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, setting(fmt.Errorf(format, args...), key))
	}
	if o.TCPAddr == "off" && o.TLSAddr == "" {
		errs = append(errs, setting(errors.New("no MQTT listener: the plain one is off and no TLS one is set"), "mqtt.tcp_addr", "mqtt.tls_addr"))
	}
	for _, a := range []struct{ key, what, addr string }{
		{"mqtt.tcp_addr", "mqtt listener", o.TCPAddr}, {"mqtt.tls_addr", "mqtt tls listener", o.TLSAddr}, {"http.addr", "http listener", o.HTTPAddr},
	} {
		if a.addr == "off" || a.addr == "" && a.key == "mqtt.tls_addr" {
			continue
		}
		if err := checkAddr(a.addr); err != nil {
			bad(a.key, "%s %q: %v", a.what, a.addr, err)
		}
	}
	if o.HTTPTLS && (o.TLSCert == "" || o.TLSKey == "") {
		bad("http.tls", "HTTP over TLS needs the certificate and key of mqtt.tls_cert and mqtt.tls_key")
	}
	if o.HTTPTLS && o.HTTPAddr == "off" {
		bad("http.tls", "HTTP over TLS is on but the HTTP listener is off")
	}
	for _, v := range []struct {
		key string
		bad bool
	}{{"http.session_ttl", o.SessionTTL < 0}, {"http.max_sessions", o.MaxSessionsPerOperator < 0},
		{"http.max_streams", o.MaxEventStreams < 0}, {"http.stream_heartbeat", o.StreamHeartbeat < 0},
		{"http.request_timeout", o.HTTPRequestTimeout < 0}, {"http.max_inflight", o.HTTPMaxInflight < 0}} {
		if v.bad {
			bad(v.key, "must not be negative (0 means the default)")
		}
	}
	if o.TLSAddr != "" {
		if o.TLSCert == "" {
			bad("mqtt.tls_cert", "the TLS listener needs a certificate")
		}
		if o.TLSKey == "" {
			bad("mqtt.tls_key", "the TLS listener needs a private key")
		}
	}
	if o.AnonymousTLS && o.TLSAddr == "" {
		bad("mqtt.tls_anonymous", "anonymous clients are allowed on the TLS listener but there is none")
	}
	if o.AnonymousTCP && o.TCPAddr == "off" {
		bad("mqtt.tcp_anonymous", "anonymous clients are allowed on the plain listener but it is off")
	}
	if o.TLSClientCA != "" && o.TLSAddr == "" {
		bad("mqtt.tls_addr", "a TLS client CA is set but there is no TLS listener")
	}
	if o.MaxPacketSize < 1024 {
		bad("mqtt.max_packet_size", "max packet size %d is below 1024 bytes", o.MaxPacketSize)
	}
	if o.Prefix == "" || hasWildcardOrSlash(o.Prefix) {
		bad("prefix", "prefix %q must be one topic level without wildcards", o.Prefix)
	}
	if err := fleet.ValidID(o.FirstOperator); err != nil {
		bad("admin.first_operator", "first operator: %v", err)
	}
	if o.FirstOperatorPassword != "" && len(o.FirstOperatorPassword) < fleet.MinPasswordLen {
		bad("admin.first_operator_password", "first operator password is shorter than %d characters", fleet.MinPasswordLen)
	}
	if o.MaxBlockSize < 0 || o.MaxBlockSize > int(o.MaxPacketSize) {
		bad("ota.max_block_size", "max block size %d must be between 0 (default) and the max packet size %d", o.MaxBlockSize, o.MaxPacketSize)
	}
	if o.MaxWindow < 0 || o.MaxWindow > 256 {
		bad("ota.max_window", "max window %d must be between 0 (default) and 256", o.MaxWindow)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"mqtt.max_subscriptions", o.MaxSubscriptions}, {"mqtt.max_gateway_subscriptions", o.MaxGatewaySubscriptions},
		{"mqtt.max_filter_levels", o.MaxFilterLevels}, {"mqtt.max_filter_length", o.MaxFilterLength}} {
		if v.n < 0 {
			bad(v.name, "%d must not be negative (0 means the default)", v.n)
		}
	}
	if o.OperatorSessionExpiry < 0 || o.OperatorSessionExpiry > o.SessionExpiry {
		bad("mqtt.operator_session_expiry", "operator session expiry %v must be between 0 (default) and the session expiry %v", o.OperatorSessionExpiry, o.SessionExpiry)
	}
	if o.GlobalRate < 0 {
		bad("ota.global_rate", "global rate %v must not be negative", o.GlobalRate)
	}
	if math.IsNaN(o.AdminRate) || math.IsInf(o.AdminRate, 0) {
		errs = append(errs, fmt.Errorf("rate_limit %v must be a number of requests per second (negative: no limit)", o.AdminRate))
	}
	if o.AdminBurst < 0 {
		errs = append(errs, fmt.Errorf("rate_burst %d must not be negative", o.AdminBurst))
	}
	if o.AuditMaxAge > 0 && o.AuditMaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("audit_max_age %v is below a minute (negative: no limit)", o.AuditMaxAge))
	}
	for i, r := range o.Rules {
		err := r.Validate(o.Prefix)
		key := fmt.Sprintf("rules[%d]", i)
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				bad(key, "%v", e)
			}
		} else if err != nil {
			bad(key, "%v", err)
		}
	}
	return errors.Join(errs...)
}

// checkAddr checks that addr is host:port with a numeric port (an empty
// host means every interface; port 0 lets the kernel choose).
func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return sysReason(err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
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
	o.Logger, o.Clock, o.EventStoreFault = nil, nil, nil
	if o.FirstOperatorPassword != "" {
		o.FirstOperatorPassword = "(set)"
	}
	return fmt.Sprintf("%+v", o)
}
