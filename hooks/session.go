package hooks

import (
	"log/slog"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otamq/otamq/ota/fleet"
)

// Defaults of SessionOptions.
const (
	DefaultMaxSubscriptions        = 100
	DefaultMaxGatewaySubscriptions = 30_000 // 3 per child: 10,000 children
	DefaultMaxFilterLevels         = 16
	DefaultMaxFilterLength         = 1024
	DefaultOperatorSessionExpiry   = time.Hour
)

// SessionOptions configure NewSession. A zero field means its default.
type SessionOptions struct {
	Server *mqtt.Server
	Fleet  *fleet.Registry
	// MaxSubscriptions bounds each client's subscriptions; gateways have
	// MaxGatewaySubscriptions instead (they subscribe to three topics per
	// child). Defaults DefaultMaxSubscriptions, DefaultMaxGatewaySubscriptions.
	MaxSubscriptions        int
	MaxGatewaySubscriptions int
	// MaxFilterLevels and MaxFilterLength bound one subscription filter.
	// Defaults DefaultMaxFilterLevels, DefaultMaxFilterLength.
	MaxFilterLevels int
	MaxFilterLength int
	// OperatorSessionExpiry bounds the session expiry of operators and
	// observers (devices get the broker's maximum). Default
	// DefaultOperatorSessionExpiry.
	OperatorSessionExpiry time.Duration
	Recorder              Recorder
	Logger                *slog.Logger
}

// Session bounds what one client's session may hold and mends what mochi
// gets wrong at the protocol level:
//
//   - subscriptions per client, and the levels and length of a filter, are
//     capped: a filter past a cap is refused with SUBACK 0x8F "topic filter
//     invalid" (0x80 on MQTT 3.1.1), so a client cannot grow the broker's
//     topic tree without bound;
//   - operators and observers get sessions of at most OperatorSessionExpiry
//     (MQTT 3.1.1 has no session expiry: their 3.1.1 sessions end with the
//     connection), told to v5 clients in CONNACK;
//   - CONNACK advertises the Topic Alias Maximum (mochi leaves it out, so
//     clients never use aliases), and an alias-only PUBLISH is resolved
//     before the ACL judges it (mochi checks the empty topic);
//   - an empty password with the password flag set is a wrong password, not
//     a protocol error (mochi answers 0x82, which MQTT 3.1.1 clients cannot
//     read), and a refusal CONNACK to a 3.1.1 client always carries one of
//     3.1.1's return codes.
type Session struct {
	mqtt.HookBase
	srv   *mqtt.Server
	fleet *fleet.Registry
	o     SessionOptions
}

// NewSession returns the session hook.
func NewSession(o SessionOptions) *Session {
	if o.MaxSubscriptions <= 0 {
		o.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if o.MaxGatewaySubscriptions <= 0 {
		o.MaxGatewaySubscriptions = DefaultMaxGatewaySubscriptions
	}
	if o.MaxFilterLevels <= 0 {
		o.MaxFilterLevels = DefaultMaxFilterLevels
	}
	if o.MaxFilterLength <= 0 {
		o.MaxFilterLength = DefaultMaxFilterLength
	}
	if o.OperatorSessionExpiry <= 0 {
		o.OperatorSessionExpiry = DefaultOperatorSessionExpiry
	}
	if o.Recorder == nil {
		o.Recorder = NopRecorder{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Session{srv: o.Server, fleet: o.Fleet, o: o}
}

// ID implements mqtt.Hook.
func (s *Session) ID() string { return "otamq-session" }

// Provides implements mqtt.Hook.
func (s *Session) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnSubscribe, mqtt.OnPacketRead, mqtt.OnPacketEncode:
		return true
	}
	return false
}

// OnConnect implements mqtt.Hook. It runs after Auth accepted the client.
func (s *Session) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	d, ok := s.fleet.LookupClient(cl.ID) // an operator session "ID~SUFFIX" too
	if !ok || d.Role.IsDevice() {
		return nil
	}
	p := &cl.Properties
	if p.ProtocolVersion < 5 {
		p.Clean = true
		return nil
	}
	if max := uint32(s.o.OperatorSessionExpiry / time.Second); p.Props.SessionExpiryInterval > max {
		p.Props.SessionExpiryInterval = max
		p.Props.SessionExpiryIntervalFlag = true
	}
	return nil
}

// errFilterRefused replaces a filter past a cap: an empty filter, which
// mochi refuses as invalid before the ACL or the topic tree see it.
const errFilterRefused = ""

// OnSubscribe implements mqtt.Hook.
func (s *Session) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	limit := s.o.MaxSubscriptions
	if d, ok := s.fleet.Lookup(cl.ID); ok && d.Role == fleet.RoleGateway {
		limit = s.o.MaxGatewaySubscriptions
	}
	n := cl.State.Subscriptions.Len()
	var filters packets.Subscriptions
	for i, sub := range pk.Filters {
		reason := ""
		switch {
		case len(sub.Filter) > s.o.MaxFilterLength:
			reason = RejectFilterTooLong
		case strings.Count(sub.Filter, "/")+1 > s.o.MaxFilterLevels:
			reason = RejectFilterTooDeep
		default:
			if _, exists := cl.State.Subscriptions.Get(sub.Filter); exists {
				continue
			}
			if n >= limit {
				reason = RejectSubscriptionCap
			} else {
				n++
				continue
			}
		}
		if filters == nil {
			filters = append(packets.Subscriptions(nil), pk.Filters...)
		}
		filters[i].Filter = errFilterRefused
		s.o.Recorder.Rejected(reason)
		s.o.Logger.Info("subscription refused", "client", cl.ID, "reason", reason, "filter_bytes", len(sub.Filter),
			"subscriptions", n, "limit", limit)
	}
	if filters != nil {
		pk.Filters = filters
	}
	return pk
}

// OnPacketRead implements mqtt.Hook. It runs on the client's read
// goroutine for every packet, before mochi validates it.
func (s *Session) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		if pk.TopicName == "" && pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 &&
			pk.Properties.TopicAlias <= s.srv.Options.Capabilities.TopicAliasMaximum {
			// Set with an empty topic returns the alias's topic without
			// changing it (or "" for an alias never set, which the ACL
			// refuses).
			pk.TopicName = cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, "")
		}
	case packets.Connect:
		if pk.Connect.PasswordFlag && len(pk.Connect.Password) == 0 {
			// Valid MQTT (a password of 0 bytes), and a wrong password for
			// every otamq client: Auth refuses it as one.
			pk.Connect.PasswordFlag = false
		}
	}
	return pk, nil
}

// OnPacketEncode implements mqtt.Hook. It runs for every packet written.
func (s *Session) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Connack {
		return pk
	}
	if pk.ProtocolVersion < 5 {
		if pk.ReasonCode > 5 {
			pk.ReasonCode = v3Return(pk.ReasonCode)
		}
		return pk
	}
	if pk.ReasonCode >= packets.ErrUnspecifiedError.Code {
		return pk
	}
	if max := s.srv.Options.Capabilities.TopicAliasMaximum; max > 0 {
		pk.Properties.TopicAliasMaximum = max
	}
	if p := cl.Properties.Props; p.SessionExpiryIntervalFlag {
		// The session expiry in use (it may be lower than asked).
		pk.Properties.SessionExpiryInterval = p.SessionExpiryInterval
		pk.Properties.SessionExpiryIntervalFlag = true
	}
	return pk
}

// v3Return maps an MQTT 5 CONNACK reason code to the nearest MQTT 3.1.1
// return code (1 to 5).
func v3Return(code byte) byte {
	switch code {
	case packets.ErrUnsupportedProtocolVersion.Code:
		return 1
	case packets.ErrClientIdentifierNotValid.Code:
		return 2
	case packets.ErrServerUnavailable.Code, packets.ErrServerBusy.Code, packets.ErrQuotaExceeded.Code,
		packets.ErrConnectionRateExceeded.Code:
		return 3
	case packets.ErrBadUsernameOrPassword.Code, packets.ErrBadAuthenticationMethod.Code:
		return 4
	}
	return 5 // not authorized: refused, for whatever other reason
}
