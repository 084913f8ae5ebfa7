// Package broker assembles a running otamq: mochi-mqtt with hardened
// capabilities, the otamq hooks registered in a fixed order, the TCP and
// TLS/mTLS listeners with a CONNECT deadline, the HTTP listener for
// /metrics and /healthz, and the store, fleet registry and admin service
// behind them.
//
// Lifecycle: New opens everything and binds the listeners (so their
// addresses are known), Start begins serving, Shutdown drains and closes in
// the reverse order: listeners and clients first, then the hooks (queued
// admin requests finish), the fleet event publisher, a last status flush,
// and the store.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/store"
)

// Broker is a running otamq.
type Broker struct {
	opts     Options
	log      *slog.Logger
	db       *store.DB
	fleet    *fleet.Registry
	catalog  *release.Catalog
	delivery *delivery.Service
	admin    *admin.Service
	srv      *mqtt.Server
	events   *hooks.Events
	device   *hooks.Device

	tcp, tls, httpLn net.Listener
	httpSrv          *http.Server
	metrics          *prometheus.Registry

	// FirstOperator is set when New created the first operator of an
	// empty database.
	FirstOperator *Credentials

	flushCancel context.CancelFunc
	flushDone   chan struct{}

	stopOnce sync.Once
	stopErr  error
}

// Credentials of a bootstrapped operator.
type Credentials struct {
	ID, Password string
	// Generated is set when the broker chose the password.
	Generated bool
	// File is where a generated password was written.
	File string
}

// New builds a broker from opts: it opens the store (creating the first
// operator if there is none), builds the MQTT server and its hooks and binds
// the listeners. Nothing is served until Start.
func New(opts Options) (b *Broker, err error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("options: %w", err)
	}
	o := opts.withDefaults()
	b = &Broker{opts: o, log: o.Logger}
	defer func() {
		if err != nil {
			b.closePartial()
		}
	}()

	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	b.db, err = store.Open(filepath.Join(o.DataDir, databaseFile), &store.Options{NoSync: o.NoSync, Logger: o.Logger})
	if err != nil {
		return nil, err
	}

	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:             b.capabilities(),
		ClientNetReadBufferSize:  o.ReadBufferSize,
		ClientNetWriteBufferSize: o.WriteBufferSize,
		Logger:                   o.Logger.With("component", "mqtt"),
		SysTopicResendInterval:   DefaultSysTopicSeconds,
		InlineClient:             true,
	})

	topics := hooks.Topics{Prefix: o.Prefix}
	b.metrics = newRegistry()
	rec := newRecorder(b.metrics)
	b.events = hooks.NewEvents(b.srv, topics, rec, o.Logger)

	b.fleet, err = fleet.Open(b.db, &fleet.Options{Now: opts.Now, Logger: o.Logger, Events: b.events, FlushInterval: o.FlushInterval})
	if err != nil {
		return nil, err
	}
	b.catalog, err = release.Open(b.db, &release.Options{Now: o.Now, MaxImageSize: o.MaxImageSize})
	if err != nil {
		return nil, err
	}
	sender := hooks.NewSender(b.srv, topics, rec, o.Logger)
	b.delivery, err = delivery.New(b.db, b.catalog, b.fleet, &delivery.Options{
		Now: o.Now, Logger: o.Logger, Sender: sender, Recorder: rec, Events: b.events,
		MaxBlockSize: o.MaxBlockSize, MaxWindow: o.MaxWindow, DeviceRate: o.DeviceRate, GlobalRate: o.GlobalRate,
		EventStoreFault: o.EventStoreFault,
	})
	if err != nil {
		return nil, err
	}
	b.admin = admin.New(b.db, b.fleet, &admin.Options{Logger: o.Logger, Now: o.Now, Disconnector: b.events,
		Catalog: b.catalog, Delivery: b.delivery})
	if err := b.bootstrap(); err != nil {
		return nil, err
	}
	b.metrics.MustRegister(newStateCollector(b.fleet, b.srv, b.catalog))

	// Hook order is fixed: authentication, authorization, device status,
	// admin requests.
	acl := hooks.NewACL(hooks.ACLOptions{Topics: topics, Fleet: b.fleet, ReadOnly: b.admin.ReadOnly, Rules: o.Rules, Recorder: rec, Logger: o.Logger})
	b.device = hooks.NewDevice(hooks.DeviceOptions{Server: b.srv, Topics: topics, Fleet: b.fleet, Recorder: rec, Logger: o.Logger,
		Delivery: b.delivery, Sender: sender})
	adm := hooks.NewAdmin(hooks.AdminOptions{Server: b.srv, Topics: topics, Fleet: b.fleet, Service: b.admin,
		Recorder: rec, Logger: o.Logger, Workers: o.AdminWorkers, Queue: o.AdminQueue})
	for _, h := range []mqtt.Hook{hooks.NewAuth(b.srv, b.fleet, acl, rec, o.Logger), acl, b.device, adm} {
		if err := b.srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("add hook %s: %w", h.ID(), err)
		}
	}

	if err := b.listen(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Broker) capabilities() *mqtt.Capabilities { return Capabilities(b.opts) }

// Capabilities returns the hardened mochi capabilities a broker with
// options o runs with (benchmarks give plain mochi the same ones).
func Capabilities(o Options) *mqtt.Capabilities {
	o = o.withDefaults()
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumPacketSize = o.MaxPacketSize
	c.MaximumClientWritesPending = o.WritesPending
	c.ReceiveMaximum = o.ReceiveMaximum
	c.MaximumInflight = o.MaxInflight
	c.TopicAliasMaximum = o.TopicAliasMaximum
	c.MaximumSessionExpiryInterval = uint32(o.SessionExpiry / time.Second)
	// mochi deletes retained and inflight messages after a day by default;
	// only an expiry the publisher asked for applies here.
	c.MaximumMessageExpiryInterval = 0
	if o.MaxClients > 0 {
		c.MaximumClients = o.MaxClients
	}
	return c
}

// bootstrap creates the first operator of an empty database.
func (b *Broker) bootstrap() error {
	o := b.opts
	created, pw, err := b.admin.EnsureOperator(context.Background(), o.FirstOperator, o.FirstOperatorPassword)
	if err != nil {
		return fmt.Errorf("first operator: %w", err)
	}
	if !created {
		return nil
	}
	c := &Credentials{ID: o.FirstOperator, Password: pw, Generated: o.FirstOperatorPassword == ""}
	if c.Generated {
		c.File = filepath.Join(o.DataDir, firstOperatorFile)
		body := fmt.Sprintf("# otamq first operator, created %s. Delete this file once the password is stored elsewhere.\nOTAMQ_USER=%s\nOTAMQ_PASSWORD=%s\n",
			o.Now().UTC().Format(time.RFC3339), c.ID, c.Password)
		if err := os.WriteFile(c.File, []byte(body), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", c.File, err)
		}
	}
	b.FirstOperator = c
	return nil
}

func (b *Broker) listen() error {
	o := b.opts
	wrap := func(l net.Listener) net.Listener {
		return &connectDeadline{Listener: l, timeout: o.ConnectTimeout, log: o.Logger}
	}
	if o.TCPAddr != "off" {
		l, err := net.Listen("tcp", o.TCPAddr)
		if err != nil {
			return fmt.Errorf("mqtt listener: %w", err)
		}
		b.tcp = l
		if err := b.srv.AddListener(listeners.NewNet("tcp", wrap(l))); err != nil {
			return err
		}
	}
	if o.TLSAddr != "" {
		cfg, err := tlsConfig(o)
		if err != nil {
			return err
		}
		l, err := net.Listen("tcp", o.TLSAddr)
		if err != nil {
			return fmt.Errorf("mqtt tls listener: %w", err)
		}
		b.tls = l
		if err := b.srv.AddListener(listeners.NewNet("tls", tls.NewListener(wrap(l), cfg))); err != nil {
			return err
		}
	}
	if o.HTTPAddr != "off" {
		l, err := net.Listen("tcp", o.HTTPAddr)
		if err != nil {
			return fmt.Errorf("http listener: %w", err)
		}
		b.httpLn = l
		b.httpSrv = &http.Server{Handler: b.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	}
	return nil
}

func tlsConfig(o Options) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("tls certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if o.TLSClientCA != "" {
		pem, err := os.ReadFile(o.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls client ca %s: no PEM certificate in it", o.TLSClientCA)
		}
		cfg.ClientCAs = pool
		// A certificate is optional (token devices use this listener too)
		// but, if given, must chain to the fleet CA.
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

func (b *Broker) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(b.metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := b.db.View(func(*store.Tx) error { return nil }); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if b.opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Start serves MQTT and HTTP and starts the status flusher.
func (b *Broker) Start() error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("serve mqtt: %w", err)
	}
	if b.httpSrv != nil {
		go func() {
			if err := b.httpSrv.Serve(b.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				b.log.Error("http server", "err", err)
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.flushCancel, b.flushDone = cancel, make(chan struct{})
	go func() {
		defer close(b.flushDone)
		b.fleet.Run(ctx)
	}()
	b.log.Info("otamq started", "mqtt", b.Addr(), "mqtt_tls", b.TLSAddr(), "http", b.HTTPAddr(), "data", b.opts.DataDir)
	return nil
}

// Shutdown stops accepting connections, disconnects every client, lets the
// hooks finish queued work, writes device status one last time and closes
// the store. If ctx ends first it returns ctx.Err() and the rest goes on in
// the background.
func (b *Broker) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.stopOnce.Do(func() { b.stopErr = b.shutdown() })
	}()
	select {
	case <-done:
		return b.stopErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Broker) shutdown() error {
	var errs []error
	// Listeners and clients first, ourselves: mochi's Close lists each
	// listener's clients with Clients.GetByListener, which read-locks the
	// client map twice and deadlocks when a client connects or disconnects
	// in between (mochi-mqtt/server#488, unfixed in v2.7.9). disconnectAll
	// takes the listeners out of mochi's hands, so Close lists none.
	b.disconnectAll()
	// Then the hooks (admin workers drain).
	if err := b.srv.Close(); err != nil {
		errs = append(errs, err)
	}
	b.events.Close()
	if b.flushCancel != nil {
		b.flushCancel()
		<-b.flushDone
	} else if err := b.fleet.Flush(context.Background()); err != nil {
		errs = append(errs, err)
	}
	if b.httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := b.httpSrv.Shutdown(sctx); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	if err := b.db.Close(); err != nil {
		errs = append(errs, err)
	}
	b.log.Info("otamq stopped")
	return errors.Join(errs...)
}

// disconnectAll closes the MQTT listeners and removes them from mochi,
// sends every client a DISCONNECT "server shutting down" and waits until
// their sessions have ended.
func (b *Broker) disconnectAll() {
	for _, id := range []string{"tcp", "tls"} {
		if l, ok := b.srv.Listeners.Get(id); ok {
			l.Close(func(string) {}) // closes the socket; clients are ours to end
			b.srv.Listeners.Delete(id)
		}
	}
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			// A client that does not read must not hold up shutdown.
			if cl.Net.Conn != nil {
				_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			}
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}()
	}
	wg.Wait()
	// Wait for the sessions to end (their disconnects recorded). mochi's
	// own ClientsWg is not waited on here: each connection adds to it from
	// its own goroutine, so a Wait that blocks while connections end is a
	// WaitGroup misuse the race detector reports; Close waits on it later,
	// when there is nothing left to wait for.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if b.device.Sessions() == 0 && !b.anyOpenClient() {
			return
		}
	}
	b.log.Warn("clients still connected after the shutdown disconnect")
}

// anyOpenClient reports whether a client other than the inline one is still
// connected.
func (b *Broker) anyOpenClient() bool {
	for _, cl := range b.srv.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() {
			return true
		}
	}
	return false
}

// closePartial releases what New opened before it failed.
func (b *Broker) closePartial() {
	for _, l := range []net.Listener{b.tcp, b.tls, b.httpLn} {
		if l != nil {
			_ = l.Close()
		}
	}
	if b.device != nil {
		_ = b.device.Stop()
	}
	if b.events != nil {
		b.events.Close()
	}
	if b.db != nil {
		_ = b.db.Close()
	}
}

func addr(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// Addr is the plain MQTT listener's address ("" if off).
func (b *Broker) Addr() string { return addr(b.tcp) }

// TLSAddr is the TLS listener's address ("" if off).
func (b *Broker) TLSAddr() string { return addr(b.tls) }

// HTTPAddr is the metrics listener's address ("" if off).
func (b *Broker) HTTPAddr() string { return addr(b.httpLn) }

// Fleet returns the registry (for tests and tools in this module).
func (b *Broker) Fleet() *fleet.Registry { return b.fleet }

// Delivery returns the delivery service (for tests and tools in this
// module).
func (b *Broker) Delivery() *delivery.Service { return b.delivery }

// Flush writes pending device status now (tests use it instead of waiting
// for the flush interval).
func (b *Broker) Flush(ctx context.Context) error { return b.fleet.Flush(ctx) }

// Server returns the embedded MQTT server (for tests and tools in this
// module that publish as the broker).
func (b *Broker) Server() *mqtt.Server { return b.srv }

// Metrics returns the Prometheus registry served on /metrics.
func (b *Broker) Metrics() *prometheus.Registry { return b.metrics }
