// Package config is otamq's configuration file: YAML, every field optional
// (a missing field means the default of broker.Options), unknown fields
// refused so a typo never passes silently. otamq.example.yaml in this
// directory documents every field.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/ota/access"
)

// File is the configuration file.
type File struct {
	DataDir string        `yaml:"data_dir"`
	Prefix  string        `yaml:"prefix"`
	MQTT    MQTT          `yaml:"mqtt"`
	HTTP    HTTP          `yaml:"http"`
	Fleet   Fleet         `yaml:"fleet"`
	Admin   Admin         `yaml:"admin"`
	OTA     OTA           `yaml:"ota"`
	Rules   []access.Rule `yaml:"rules"`
	Log     Log           `yaml:"log"`
}

// MQTT configures the listeners and the MQTT server's limits.
type MQTT struct {
	TCPAddr     string `yaml:"tcp_addr"`
	TLSAddr     string `yaml:"tls_addr"`
	TLSCert     string `yaml:"tls_cert"`
	TLSKey      string `yaml:"tls_key"`
	TLSClientCA string `yaml:"tls_client_ca"`
	// TCPAnonymous and TLSAnonymous let unregistered clients in anonymously
	// (see broker.Options.AnonymousTCP).
	TCPAnonymous      bool          `yaml:"tcp_anonymous"`
	TLSAnonymous      bool          `yaml:"tls_anonymous"`
	ConnectTimeout    time.Duration `yaml:"connect_timeout"`
	MaxPacketSize     uint32        `yaml:"max_packet_size"`
	MaxClients        int64         `yaml:"max_clients"`
	WritesPending     int32         `yaml:"writes_pending"`
	ReceiveMaximum    uint16        `yaml:"receive_maximum"`
	MaxInflight       uint16        `yaml:"max_inflight"`
	TopicAliasMaximum uint16        `yaml:"topic_alias_maximum"`
	SessionExpiry     time.Duration `yaml:"session_expiry"`
	ReadBufferSize    int           `yaml:"read_buffer_size"`
	WriteBufferSize   int           `yaml:"write_buffer_size"`
	// Per-client limits (see broker.Options).
	MaxSubscriptions        int           `yaml:"max_subscriptions"`
	MaxGatewaySubscriptions int           `yaml:"max_gateway_subscriptions"`
	MaxFilterLevels         int           `yaml:"max_filter_levels"`
	MaxFilterLength         int           `yaml:"max_filter_length"`
	OperatorSessionExpiry   time.Duration `yaml:"operator_session_expiry"`
}

// HTTP configures the HTTP listener: /metrics, /healthz and the HTTP API.
type HTTP struct {
	Addr  string `yaml:"addr"`
	Pprof bool   `yaml:"pprof"`
	// API serves the HTTP API (/api/v1/); default true.
	API *bool `yaml:"api"`
	// TLS serves the listener over TLS with mqtt.tls_cert and mqtt.tls_key.
	TLS             bool          `yaml:"tls"`
	SessionTTL      time.Duration `yaml:"session_ttl"`
	MaxSessions     int           `yaml:"max_sessions"`
	MaxStreams      int           `yaml:"max_streams"`
	StreamHeartbeat time.Duration `yaml:"stream_heartbeat"`
	RequestTimeout  time.Duration `yaml:"request_timeout"`
	MaxInflight     int           `yaml:"max_inflight"`
}

// Fleet configures the registry.
type Fleet struct {
	FlushInterval time.Duration `yaml:"flush_interval"`
	ChildTimeout  time.Duration `yaml:"child_timeout"`
}

// Admin configures the admin API.
type Admin struct {
	Workers               int           `yaml:"workers"`
	Queue                 int           `yaml:"queue"`
	FirstOperator         string        `yaml:"first_operator"`
	FirstOperatorPassword string        `yaml:"first_operator_password"`
	RateLimit             float64       `yaml:"rate_limit"`
	RateBurst             int           `yaml:"rate_burst"`
	AuditMaxRecords       int           `yaml:"audit_max_records"`
	AuditMaxAge           time.Duration `yaml:"audit_max_age"`
}

// OTA configures releases and block serving.
type OTA struct {
	MaxImageSize uint64  `yaml:"max_image_size"`
	MaxBlockSize int     `yaml:"max_block_size"`
	MaxWindow    int     `yaml:"max_window"`
	DeviceRate   float64 `yaml:"device_rate"`
	GlobalRate   float64 `yaml:"global_rate"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
}

// Load reads and strictly decodes the file at path (see Parse). Every
// problem is reported at once, each naming the file, line and key; what did
// decode is returned with them, so that a caller can report the problems
// Options finds in the same breath.
func Load(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("config: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		var errs []error
		for _, e := range leaves(err) {
			errs = append(errs, fmt.Errorf("%s: %w", path, e))
		}
		return f, errors.Join(errs...)
	}
	return f, nil
}

// Parse decodes a configuration file's content. Unknown or repeated keys,
// values of the wrong type and durations without a unit are errors, all
// reported at once (joined), each as "line N: key: problem"; the fields
// that did decode are set in the File returned with them.
func Parse(b []byte) (File, error) {
	var f File
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return File{}, err
	}
	if root.Kind == 0 {
		return f, nil // empty file
	}
	var d decoder
	d.decode(&root, reflect.ValueOf(&f).Elem(), "")
	return f, errors.Join(d.errs...)
}

// leaves returns the errors joined in err, or err alone.
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Options converts f to broker options. Zero fields stay zero, meaning the
// broker's defaults. Logger is built from f.Log.
func (f File) Options(logOut io.Writer) (broker.Options, error) {
	logger, logErr := f.Log.Logger(logOut)
	o := broker.Options{
		DataDir: f.DataDir, Prefix: f.Prefix,
		TCPAddr: f.MQTT.TCPAddr, TLSAddr: f.MQTT.TLSAddr, TLSCert: f.MQTT.TLSCert, TLSKey: f.MQTT.TLSKey, TLSClientCA: f.MQTT.TLSClientCA,
		AnonymousTCP: f.MQTT.TCPAnonymous, AnonymousTLS: f.MQTT.TLSAnonymous,
		HTTPAddr: f.HTTP.Addr, Pprof: f.HTTP.Pprof, APIOff: f.HTTP.API != nil && !*f.HTTP.API, HTTPTLS: f.HTTP.TLS,
		SessionTTL: f.HTTP.SessionTTL, MaxSessionsPerOperator: f.HTTP.MaxSessions,
		MaxEventStreams: f.HTTP.MaxStreams, StreamHeartbeat: f.HTTP.StreamHeartbeat, HTTPRequestTimeout: f.HTTP.RequestTimeout,
		HTTPMaxInflight: f.HTTP.MaxInflight,
		ConnectTimeout:  f.MQTT.ConnectTimeout, MaxPacketSize: f.MQTT.MaxPacketSize, MaxClients: f.MQTT.MaxClients,
		WritesPending: f.MQTT.WritesPending, ReceiveMaximum: f.MQTT.ReceiveMaximum, MaxInflight: f.MQTT.MaxInflight,
		TopicAliasMaximum: f.MQTT.TopicAliasMaximum, SessionExpiry: f.MQTT.SessionExpiry,
		ReadBufferSize: f.MQTT.ReadBufferSize, WriteBufferSize: f.MQTT.WriteBufferSize,
		MaxSubscriptions: f.MQTT.MaxSubscriptions, MaxGatewaySubscriptions: f.MQTT.MaxGatewaySubscriptions,
		MaxFilterLevels: f.MQTT.MaxFilterLevels, MaxFilterLength: f.MQTT.MaxFilterLength,
		OperatorSessionExpiry: f.MQTT.OperatorSessionExpiry,
		FlushInterval:         f.Fleet.FlushInterval,
		ChildTimeout:          f.Fleet.ChildTimeout,
		AdminWorkers:          f.Admin.Workers, AdminQueue: f.Admin.Queue,
		FirstOperator: f.Admin.FirstOperator, FirstOperatorPassword: f.Admin.FirstOperatorPassword,
		AdminRate: f.Admin.RateLimit, AdminBurst: f.Admin.RateBurst,
		AuditMaxRecords: f.Admin.AuditMaxRecords, AuditMaxAge: f.Admin.AuditMaxAge,
		MaxImageSize: f.OTA.MaxImageSize, MaxBlockSize: f.OTA.MaxBlockSize, MaxWindow: f.OTA.MaxWindow,
		DeviceRate: f.OTA.DeviceRate, GlobalRate: f.OTA.GlobalRate,
		Rules:  f.Rules,
		Logger: logger,
	}
	if err := errors.Join(logErr, o.Validate()); err != nil {
		return broker.Options{}, err
	}
	return o, nil
}

// Logger builds the slog logger l describes, writing to w. Its errors are
// *broker.SettingError values naming log.level and log.format.
func (l Log) Logger(w io.Writer) (*slog.Logger, error) {
	var errs []error
	var level slog.Level
	switch strings.ToLower(l.Level) {
	case "", "info":
		level = slog.LevelInfo
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		errs = append(errs, &broker.SettingError{Keys: []string{"log.level"},
			Err: fmt.Errorf("log level %q: want debug, info, warn or error", l.Level)})
	}
	ho := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(l.Format) {
	case "", "text":
		h = slog.NewTextHandler(w, ho)
	case "json":
		h = slog.NewJSONHandler(w, ho)
	default:
		errs = append(errs, &broker.SettingError{Keys: []string{"log.format"},
			Err: fmt.Errorf("log format %q: want text or json", l.Format)})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return slog.New(h), nil
}
