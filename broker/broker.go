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
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/otamq/otamq/console"
	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/httpapi"
	"github.com/otamq/otamq/ota/access"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/audit"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/event"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/login"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/rollout"
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
	rollouts *rollout.Engine
	admin    *admin.Service
	api      *httpapi.API // nil when off
	srv      *mqtt.Server
	events   *hooks.Events
	feed     *event.Feed
	device   *hooks.Device

	tcp, tls, httpLn net.Listener
	mqttLns          []*mqttListener // what mochi serves, to end their connections
	httpSrv          *http.Server
	metrics          *prometheus.Registry

	// FirstOperator is set when New created the first operator of an
	// empty database.
	FirstOperator *Credentials

	flushCancel context.CancelFunc
	flushDone   chan struct{}
	rolloutDone chan struct{}

	stopOnce sync.Once
	stopErr  error
}

// maxHeaderBytes bounds an HTTP request's header.
const maxHeaderBytes = 64 << 10

// Credentials of a bootstrapped operator.
type Credentials struct {
	ID, Password string
	// Generated is set when the broker chose the password.
	Generated bool
	// File is where a generated password was written.
	File string
}

// New builds a broker from opts: it loads the TLS files, opens the store,
// binds the listeners (so their addresses are known), builds the MQTT
// server and its hooks and, last, creates the first operator if there is
// none. Nothing is served until Start.
//
// A problem with a setting is returned as a *SettingError (several joined
// with errors.Join). When New fails it leaves nothing behind: every
// goroutine it started has ended, every listener and the store are closed,
// and no operator has been created.
func New(opts Options) (_ *Broker, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	o := opts.withDefaults()
	// Every line, mochi's included, goes through the flood guard.
	o.Logger = slog.New(newLogHandler(o.Logger.Handler()))
	b := &Broker{opts: o, log: o.Logger}
	// undo releases, newest first, what New has opened when it fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	var tlsCfg *tls.Config
	if o.TLSAddr != "" || o.HTTPTLS {
		if tlsCfg, err = tlsConfig(o); err != nil {
			return nil, err
		}
	}

	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, setting(fmt.Errorf("data directory %s: %w", o.DataDir, sysReason(err)), "data_dir")
	}
	b.db, err = store.Open(filepath.Join(o.DataDir, databaseFile), &store.Options{NoSync: o.NoSync, Logger: o.Logger})
	if errors.Is(err, store.ErrLocked) {
		return nil, setting(fmt.Errorf("data directory %s is in use by another otamq (lock held)", o.DataDir), "data_dir")
	}
	if err != nil {
		return nil, setting(fmt.Errorf("data directory %s: %w", o.DataDir, err), "data_dir")
	}
	undo = append(undo, func() { _ = b.db.Close() })
	if err := b.bind(&undo); err != nil {
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

	topics := access.Topics{Prefix: o.Prefix}
	b.metrics = newRegistry()
	rec := newRecorder(b.metrics)
	b.events = hooks.NewEvents(b.srv, topics, rec, o.Logger)
	undo = append(undo, b.events.Close)
	// The domain's events, typed: the dashboard stream is one subscriber
	// (best effort); the rollout engine, which subscribes itself, another
	// (in the transaction that records a device's event).
	b.feed = &event.Feed{}
	b.feed.Subscribe(b.events)

	b.fleet, err = fleet.Open(b.db, &fleet.Options{Clock: opts.Clock, Logger: o.Logger, Feed: b.feed, FlushInterval: o.FlushInterval,
		ChildTimeout: o.ChildTimeout})
	if err != nil {
		return nil, err
	}
	b.catalog, err = release.Open(b.db, &release.Options{Clock: o.Clock, MaxImageSize: o.MaxImageSize})
	if err != nil {
		return nil, err
	}
	// The ACL judges subscribers for the sender too; which admin actions are
	// read-only is asked of the admin service, built further down.
	acl := hooks.NewACL(hooks.ACLOptions{Topics: topics, Fleet: b.fleet, ReadOnly: func(a string) bool { return b.admin.ReadOnly(a) },
		Rules: o.Rules, Recorder: rec, Logger: o.Logger})
	sender := hooks.NewSender(b.srv, topics, acl, rec, o.Logger)
	b.delivery, err = delivery.New(b.db, b.catalog, b.fleet, &delivery.Options{
		Clock: o.Clock, Logger: o.Logger, Sender: sender, Recorder: rec, Feed: b.feed,
		MaxBlockSize: o.MaxBlockSize, MaxWindow: o.MaxWindow, DeviceRate: o.DeviceRate, GlobalRate: o.GlobalRate,
		EventFault: o.EventStoreFault,
	})
	if err != nil {
		return nil, err
	}
	b.rollouts, err = rollout.New(b.db, b.fleet, b.catalog, b.delivery, &rollout.Options{Clock: o.Clock, Logger: o.Logger,
		Feed: b.feed, Recorder: rec, Tick: o.RolloutTick})
	if err != nil {
		return nil, err
	}
	// The loads above read most of the store through its memory map;
	// what they need is in memory now.
	if err := b.db.ReleasePages(); err != nil {
		o.Logger.Warn("store pages read at start stay mapped", "err", err)
	}
	var sessions *login.Store
	apiOn := b.httpLn != nil && !o.APIOff
	if apiOn {
		if sessions, err = login.Open(b.db, &login.Options{Clock: o.Clock, TTL: o.SessionTTL, MaxPerOperator: o.MaxSessionsPerOperator}); err != nil {
			return nil, err
		}
	}
	b.admin, err = admin.New(b.db, b.fleet, &admin.Options{Logger: o.Logger, Clock: o.Clock, Sessions: sessions,
		Disconnector: hooks.NewKicker(b.srv, b.fleet, b.events.Disconnect),
		Catalog:      b.catalog, Delivery: b.delivery, Rollouts: b.rollouts,
		Rate: o.AdminRate, Burst: o.AdminBurst, Audit: audit.Retention{MaxRecords: o.AuditMaxRecords, MaxAge: o.AuditMaxAge}})
	if err != nil {
		return nil, err
	}
	b.metrics.MustRegister(newStateCollector(b.fleet, b.srv, b.catalog, b.rollouts))
	if apiOn {
		if host, _, _ := net.SplitHostPort(b.httpLn.Addr().String()); !o.HTTPTLS && !net.ParseIP(host).IsLoopback() {
			o.Logger.Warn("the HTTP API is served without TLS on an address other hosts can reach: passwords and session tokens cross the network in the clear (set http.tls, a loopback http.addr, or http.api: false)",
				"addr", b.httpLn.Addr().String())
		}
		b.api = httpapi.New(httpapi.Options{Service: b.admin, Fleet: b.fleet, Recorder: rec, Logger: o.Logger,
			MaxImageSize: o.MaxImageSize, MaxStreams: o.MaxEventStreams, StreamQueue: o.StreamQueue, Heartbeat: o.StreamHeartbeat,
			RequestTimeout: o.HTTPRequestTimeout, MaxInflight: o.HTTPMaxInflight})
		undo = append(undo, b.api.Close)
		b.feed.Subscribe(b.api)
		api := b.api
		b.metrics.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "otamq_http_event_streams", Help: "HTTP API event streams open now."},
				func() float64 { return float64(api.Streams()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "otamq_http_event_streams_dropped_total",
				Help: "HTTP API event streams ended because their client fell behind."},
				func() float64 { return float64(api.StreamsDropped()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "otamq_http_events_dropped_total",
				Help: "Events no HTTP API stream got because the stream hub's queue was full."},
				func() float64 { return float64(api.EventsDropped()) }))
	}

	// Hook order is fixed: authentication, per-client limits,
	// authorization, device status, block serving, admin requests; the
	// device status and admin requests see publishes through one hook of
	// their own (Publishes).
	blocks := hooks.NewBlocks(sender, b.delivery, acl, topics, o.Logger)
	undo = append(undo, func() { _ = blocks.Stop() })
	b.device = hooks.NewDevice(hooks.DeviceOptions{Server: b.srv, Topics: topics, Fleet: b.fleet, Recorder: rec, Logger: o.Logger,
		Delivery: b.delivery, Sender: sender, Blocks: blocks, Events: b.events})
	undo = append(undo, func() { _ = b.device.Stop() })
	adm := hooks.NewAdmin(hooks.AdminOptions{Server: b.srv, Topics: topics, Fleet: b.fleet, Service: b.admin,
		Recorder: rec, Logger: o.Logger, Workers: o.AdminWorkers, Queue: o.AdminQueue})
	undo = append(undo, func() { _ = adm.Stop() })
	session := hooks.NewSession(hooks.SessionOptions{Server: b.srv, Fleet: b.fleet, Recorder: rec, Logger: o.Logger,
		MaxSubscriptions: o.MaxSubscriptions, MaxGatewaySubscriptions: o.MaxGatewaySubscriptions,
		MaxFilterLevels: o.MaxFilterLevels, MaxFilterLength: o.MaxFilterLength, OperatorSessionExpiry: o.OperatorSessionExpiry})
	auth := hooks.NewAuth(b.srv, b.fleet, acl, rec, o.Logger)
	auth.Anonymous = map[string]bool{"tcp": o.AnonymousTCP, "tls": o.AnonymousTLS}
	for id, on := range auth.Anonymous {
		if on {
			o.Logger.Warn("anonymous clients allowed: unregistered client IDs connect without credentials and get the rules for role anonymous",
				"listener", id)
		}
	}
	publishes := hooks.NewPublishes(b.device, adm)
	for _, h := range []mqtt.Hook{auth, session, acl, b.device, blocks, adm, publishes} {
		if err := b.srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("add hook %s: %w", h.ID(), err)
		}
	}

	if err := b.listen(tlsCfg); err != nil {
		return nil, err
	}
	// Last, so that a broker that fails to start never creates an
	// operator whose password nobody saw.
	if err := b.bootstrap(); err != nil {
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

// bootstrap creates the first operator of an empty database. A generated
// password is written to its file before the operator exists (and the file
// removed if none was created), so that no operator is ever created whose
// password is nowhere to be found.
func (b *Broker) bootstrap() error {
	o := b.opts
	c := &Credentials{ID: o.FirstOperator, Password: o.FirstOperatorPassword, Generated: o.FirstOperatorPassword == ""}
	var tmp string
	if c.Generated {
		c.Password = fleet.NewPassword()
		body := fmt.Sprintf("# otamq first operator, created %s. Delete this file once the password is stored elsewhere.\nOTAMQ_USER=%s\nOTAMQ_PASSWORD=%s\n",
			o.Clock.Now().UTC().Format(time.RFC3339), c.ID, c.Password)
		f, err := os.CreateTemp(o.DataDir, firstOperatorFile+".*") // mode 0600
		if err != nil {
			return setting(fmt.Errorf("data directory %s: %w", o.DataDir, sysReason(err)), "data_dir")
		}
		tmp = f.Name()
		defer func() {
			if tmp != "" {
				_ = os.Remove(tmp) // no operator was created with this password
			}
		}()
		_, err = f.WriteString(body)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return setting(fmt.Errorf("write %s: %w", tmp, sysReason(err)), "data_dir")
		}
	}
	created, _, err := b.admin.EnsureOperator(context.Background(), c.ID, c.Password)
	if errors.Is(err, fleet.ErrExists) {
		return setting(fmt.Errorf("first operator %s: the ID is already registered (as a device, gateway or observer)", c.ID), "admin.first_operator")
	}
	if err != nil {
		return fmt.Errorf("first operator: %w", err)
	}
	if !created {
		return nil
	}
	if c.Generated {
		c.File = filepath.Join(o.DataDir, firstOperatorFile)
		if err := os.Rename(tmp, c.File); err != nil {
			// The operator exists now: keep its password where it is
			// rather than fail.
			c.File = tmp
			b.log.Warn("first operator file not renamed", "file", c.File, "err", err)
		}
		tmp = ""
	}
	b.FirstOperator = c
	return nil
}

// bind opens the listeners' sockets, adding each to undo.
func (b *Broker) bind(undo *[]func()) error {
	o := b.opts
	bind := func(what, addr, key string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, setting(fmt.Errorf("%s %s: %w", what, addr, sysReason(err)), key)
		}
		*undo = append(*undo, func() { _ = l.Close() })
		return l, nil
	}
	var err error
	if o.TCPAddr != "off" {
		if b.tcp, err = bind("mqtt listener", o.TCPAddr, "mqtt.tcp_addr"); err != nil {
			return err
		}
	}
	if o.TLSAddr != "" {
		if b.tls, err = bind("mqtt tls listener", o.TLSAddr, "mqtt.tls_addr"); err != nil {
			return err
		}
	}
	if o.HTTPAddr != "off" {
		if b.httpLn, err = bind("http listener", o.HTTPAddr, "http.addr"); err != nil {
			return err
		}
	}
	return nil
}

// listen hands the bound sockets to mochi and the HTTP server.
func (b *Broker) listen(tlsCfg *tls.Config) error {
	o := b.opts
	wrap := func(l net.Listener) net.Listener {
		return &connectDeadline{Listener: l, timeout: o.ConnectTimeout, log: o.Logger}
	}
	if b.tcp != nil {
		l := newMQTTListener("tcp", wrap(b.tcp))
		if err := b.srv.AddListener(l); err != nil {
			return err
		}
		b.mqttLns = append(b.mqttLns, l)
	}
	if b.tls != nil {
		l := newMQTTListener("tls", tls.NewListener(wrap(b.tls), tlsCfg))
		if err := b.srv.AddListener(l); err != nil {
			return err
		}
		b.mqttLns = append(b.mqttLns, l)
	}
	if b.httpLn != nil {
		if o.HTTPTLS {
			cfg := tlsCfg.Clone()
			cfg.ClientAuth, cfg.ClientCAs = tls.NoClientCert, nil
			b.httpLn = tls.NewListener(b.httpLn, cfg)
		}
		b.httpSrv = &http.Server{Handler: b.httpHandler(), ReadHeaderTimeout: 10 * time.Second,
			MaxHeaderBytes: maxHeaderBytes, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(o.Logger.With("component", "http").Handler(), slog.LevelDebug)}
	}
	return nil
}

// tlsConfig loads the TLS listener's certificate, key and client CA.
func tlsConfig(o Options) (*tls.Config, error) {
	read := func(what, path, key string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, setting(fmt.Errorf("%s %s: %w", what, path, sysReason(err)), key)
		}
		return b, nil
	}
	certPEM, err := read("tls certificate", o.TLSCert, "mqtt.tls_cert")
	if err != nil {
		return nil, err
	}
	keyPEM, err := read("tls key", o.TLSKey, "mqtt.tls_key")
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, setting(fmt.Errorf("tls certificate %s and key %s: %w", o.TLSCert, o.TLSKey, err), "mqtt.tls_cert", "mqtt.tls_key")
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if o.TLSClientCA != "" {
		pem, err := read("tls client ca", o.TLSClientCA, "mqtt.tls_client_ca")
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, setting(fmt.Errorf("tls client ca %s: no PEM certificate in it", o.TLSClientCA), "mqtt.tls_client_ca")
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
		if err := b.db.View(context.Background(), func(store.Tx) error { return nil }); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if b.api != nil {
		mux.Handle("/api/", b.api.Handler())
		mux.Handle("/", console.Handler())
	}
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
	b.rolloutDone = make(chan struct{})
	go func() {
		defer close(b.rolloutDone)
		b.rollouts.Run(ctx)
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
	// The HTTP API first: its requests under way finish, its event
	// streams end, and it takes no more (while the store and the engine
	// still run).
	if b.api != nil {
		b.api.Close()
	}
	// Listeners and clients, ourselves: mochi's Close lists each
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
		<-b.rolloutDone
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
	// End every session, and again any that connected meanwhile (a socket
	// accepted before the listener closed may send CONNECT at any time
	// until CloseConns below), then wait for them to be gone (their
	// disconnects recorded). mochi's own ClientsWg is not waited on here:
	// each connection adds to it from its own goroutine, so a Wait that
	// blocks while connections end is a WaitGroup misuse the race detector
	// reports; Close waits on it later, when there is nothing left to wait
	// for.
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	ended := map[*mqtt.Client]bool{}
	endNew := func() {
		for _, cl := range b.srv.Clients.GetAll() {
			if cl.Net.Inline || cl.Closed() || ended[cl] {
				continue
			}
			ended[cl] = true
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				// A client that does not read must not hold up shutdown.
				hooks.EndConnection(b.srv, cl, packets.ErrServerShuttingDown)
			}()
		}
	}
	endNew()
	wg.Wait()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if b.device.Sessions() == 0 && !b.anyOpenClient() {
			break
		}
		if !time.Now().Before(deadline) {
			b.log.Warn("clients still connected after the shutdown disconnect")
			break
		}
		endNew()
	}
	wg.Wait()
	// Sockets that never sent CONNECT are in no client list; close them
	// (and any stuck one) and wait until mochi's goroutines are done, so
	// that Close waits for nothing.
	for _, l := range b.mqttLns {
		l.CloseConns()
	}
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
