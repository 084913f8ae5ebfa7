// Package config is otamq's configuration file: YAML, every field optional
// (a missing field means the default of broker.Options), unknown fields
// refused so a typo never passes silently. otamq.example.yaml in this
// directory documents every field.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/otamq/otamq/broker"
	"github.com/otamq/otamq/hooks"
)

// File is the configuration file.
type File struct {
	DataDir string       `yaml:"data_dir"`
	Prefix  string       `yaml:"prefix"`
	MQTT    MQTT         `yaml:"mqtt"`
	HTTP    HTTP         `yaml:"http"`
	Fleet   Fleet        `yaml:"fleet"`
	Admin   Admin        `yaml:"admin"`
	OTA     OTA          `yaml:"ota"`
	Rules   []hooks.Rule `yaml:"rules"`
	Log     Log          `yaml:"log"`
}

// MQTT configures the listeners and the MQTT server's limits.
type MQTT struct {
	TCPAddr           string        `yaml:"tcp_addr"`
	TLSAddr           string        `yaml:"tls_addr"`
	TLSCert           string        `yaml:"tls_cert"`
	TLSKey            string        `yaml:"tls_key"`
	TLSClientCA       string        `yaml:"tls_client_ca"`
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
}

// HTTP configures the metrics listener.
type HTTP struct {
	Addr  string `yaml:"addr"`
	Pprof bool   `yaml:"pprof"`
}

// Fleet configures the registry.
type Fleet struct {
	FlushInterval time.Duration `yaml:"flush_interval"`
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

// Load reads and strictly decodes the file at path.
func Load(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("config: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		return File{}, fmt.Errorf("config %s: %w", path, err)
	}
	return f, nil
}

// Parse decodes a configuration file's content. Unknown fields are errors.
func Parse(b []byte) (File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return File{}, err
	}
	return f, nil
}

// Options converts f to broker options. Zero fields stay zero, meaning the
// broker's defaults. Logger is built from f.Log.
func (f File) Options(logOut io.Writer) (broker.Options, error) {
	logger, err := f.Log.Logger(logOut)
	if err != nil {
		return broker.Options{}, err
	}
	o := broker.Options{
		DataDir: f.DataDir, Prefix: f.Prefix,
		TCPAddr: f.MQTT.TCPAddr, TLSAddr: f.MQTT.TLSAddr, TLSCert: f.MQTT.TLSCert, TLSKey: f.MQTT.TLSKey, TLSClientCA: f.MQTT.TLSClientCA,
		HTTPAddr: f.HTTP.Addr, Pprof: f.HTTP.Pprof,
		ConnectTimeout: f.MQTT.ConnectTimeout, MaxPacketSize: f.MQTT.MaxPacketSize, MaxClients: f.MQTT.MaxClients,
		WritesPending: f.MQTT.WritesPending, ReceiveMaximum: f.MQTT.ReceiveMaximum, MaxInflight: f.MQTT.MaxInflight,
		TopicAliasMaximum: f.MQTT.TopicAliasMaximum, SessionExpiry: f.MQTT.SessionExpiry,
		ReadBufferSize: f.MQTT.ReadBufferSize, WriteBufferSize: f.MQTT.WriteBufferSize,
		FlushInterval: f.Fleet.FlushInterval,
		AdminWorkers:  f.Admin.Workers, AdminQueue: f.Admin.Queue,
		FirstOperator: f.Admin.FirstOperator, FirstOperatorPassword: f.Admin.FirstOperatorPassword,
		AdminRate: f.Admin.RateLimit, AdminBurst: f.Admin.RateBurst,
		AuditMaxRecords: f.Admin.AuditMaxRecords, AuditMaxAge: f.Admin.AuditMaxAge,
		MaxImageSize: f.OTA.MaxImageSize, MaxBlockSize: f.OTA.MaxBlockSize, MaxWindow: f.OTA.MaxWindow,
		DeviceRate: f.OTA.DeviceRate, GlobalRate: f.OTA.GlobalRate,
		Rules:  f.Rules,
		Logger: logger,
	}
	if err := o.Validate(); err != nil {
		return broker.Options{}, err
	}
	return o, nil
}

// Logger builds the slog logger l describes, writing to w.
func (l Log) Logger(w io.Writer) (*slog.Logger, error) {
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
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", l.Level)
	}
	ho := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(l.Format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", l.Format)
}
