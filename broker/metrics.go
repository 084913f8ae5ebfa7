package broker

import (
	"slices"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/otamq/otamq/hooks"
	"github.com/otamq/otamq/ota/admin"
	"github.com/otamq/otamq/ota/delivery"
	"github.com/otamq/otamq/ota/fleet"
	"github.com/otamq/otamq/ota/release"
	"github.com/otamq/otamq/ota/rollout"
	"github.com/otamq/otamq/ota/wire"
)

// Metric names are a contract with the Grafana dashboard (docs/METRICS.md):
// rename nothing without updating config/grafana and docs/METRICS.md.

// maxVersionSeries bounds otamq_devices_by_version: firmware versions come
// from devices, so past this many distinct (version, hardware) pairs the
// rest are counted under version "other".
const maxVersionSeries = 500

// recorder implements hooks.Recorder with Prometheus counters.
type recorder struct {
	connects      prometheus.Counter
	disconnects   *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	births        prometheus.Counter
	wills         prometheus.Counter
	admin         *prometheus.CounterVec
	eventsDropped prometheus.Counter

	blockRequests   *prometheus.CounterVec
	blockBytes      prometheus.Counter
	gatewayBytes    prometheus.Counter
	gatewayCovered  prometheus.Counter
	downloadSeconds prometheus.Histogram
	deviceEvents    *prometheus.CounterVec
	eventsRefused   *prometheus.CounterVec
	uploadsRejected *prometheus.CounterVec
	loginsThrottled *prometheus.CounterVec
	anonymous       prometheus.Counter

	updates        *prometheus.CounterVec
	rollbacks      *prometheus.CounterVec
	healthFailures *prometheus.CounterVec
	alarms         *prometheus.CounterVec
}

var (
	_ hooks.Recorder           = (*recorder)(nil)
	_ delivery.Recorder        = (*recorder)(nil)
	_ delivery.GatewayRecorder = (*recorder)(nil)
	_ rollout.Recorder         = (*recorder)(nil)
)

func newRecorder(reg prometheus.Registerer) *recorder {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	r := &recorder{
		connects: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_connects_total",
			Help: "Sessions established by registered clients."}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_disconnects_total",
			Help: "Sessions ended, by reason (normal, keepalive_timeout, connection_lost, taken_over, protocol_error, kicked, server_shutdown)."}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_rejected_total",
			Help: "Connections and messages refused, by reason."}, []string{"reason"}),
		births: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_births_total",
			Help: "Birth messages accepted."}),
		wills: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_wills_total",
			Help: "Last Wills published for the current session of a client."}),
		admin: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_admin_requests_total",
			Help: "Admin requests, by verb (resource/verb) and result (ok or error code)."}, []string{"verb", "result"}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_fleet_events_dropped_total",
			Help: "Fleet events lost to a full publish queue."}),
		blockRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_block_requests_total",
			Help: "Block requests by result (served, not_assigned, unknown_image, out_of_range, bad_request, rate_limited, internal)."}, []string{"result"}),
		blockBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_block_bytes_total",
			Help: "Image bytes sent in blocks."}),
		gatewayBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_gateway_block_bytes_total",
			Help: "Image bytes sent in blocks to gateways on their own topics, for images offered to their children (a part of otamq_block_bytes_total)."}),
		gatewayCovered: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_gateway_child_block_bytes_total",
			Help: "The bytes of otamq_gateway_block_bytes_total, each counted once per child of the gateway the image was offered to: what the children would have fetched without their gateway's cache."}),
		downloadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "otamq_download_seconds",
			Help:    "Download duration, from the first block served to the device's update.download.completed event.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200}}),
		deviceEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_device_events_total",
			Help: "Update events recorded, by code (update.download.completed, ...)."}, []string{"code"}),
		eventsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_device_events_dropped_total",
			Help: "Device events dropped, by reason (unknown_rollout)."}, []string{"reason"}),
		uploadsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_uploads_rejected_total",
			Help: "Release uploads refused, by reason (bad_manifest, unknown_key, bad_signature, key_revoked, digest_mismatch, conflict, ...)."}, []string{"reason"}),
		anonymous: prometheus.NewCounter(prometheus.CounterOpts{Name: "otamq_anonymous_connects_total",
			Help: "Clients let in anonymously on a listener that allows them."}),
		loginsThrottled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_logins_throttled_total",
			Help: "Operator logins refused without a password check after failed attempts, by scope (client_id, address, busy)."}, []string{"scope"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_updates_total",
			Help: "Devices' results in rollouts, by result (succeeded, failed, rolled_back, timed_out, cancelled), hardware, region and the rollout's release version."},
			[]string{"result", "hardware", "region", "version"}),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_rollbacks_total",
			Help: "Devices in rollouts that rolled back, by hardware, region and the rollout's release version."},
			[]string{"hardware", "region", "version"}),
		healthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_update_health_failures_total",
			Help: "Devices in rollouts whose result is a health failure (reported, or judged by the broker: reconnect loop, silence after the reboot, Last Will in trial), by hardware, region and the rollout's release version."},
			[]string{"hardware", "region", "version"}),
		alarms: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "otamq_rollout_alarms_total",
			Help: "Rollout thresholds passed, by kind (rollback, health) and level (warn: an alarm; pause: the rollout paused)."},
			[]string{"kind", "level"}),
	}
	for _, c := range []prometheus.Collector{r.connects, r.disconnects, r.rejected, r.births, r.wills, r.admin, r.eventsDropped,
		r.blockRequests, r.blockBytes, r.gatewayBytes, r.gatewayCovered, r.downloadSeconds, r.deviceEvents, r.eventsRefused, r.uploadsRejected, r.loginsThrottled, r.anonymous,
		r.updates, r.rollbacks, r.healthFailures, r.alarms} {
		f(c)
	}
	// Known label values start at 0, so dashboards and rate() see them
	// before the first event.
	for _, reason := range fleet.DisconnectReasons {
		r.disconnects.WithLabelValues(reason)
	}
	for _, reason := range hooks.RejectReasons {
		r.rejected.WithLabelValues(reason)
	}
	for _, result := range delivery.BlockResults {
		r.blockRequests.WithLabelValues(result)
	}
	r.eventsRefused.WithLabelValues("unknown_rollout")
	for _, kind := range []string{"rollback", "health"} {
		for _, level := range []string{"warn", "pause"} {
			r.alarms.WithLabelValues(kind, level)
		}
	}
	for _, scope := range fleet.ThrottleScopes {
		r.loginsThrottled.WithLabelValues(scope)
	}
	for c := wire.EventCode(1); c.Valid(); c++ {
		r.deviceEvents.WithLabelValues(c.String())
	}
	for _, code := range []string{admin.CodeBadManifest, admin.CodeUnknownKey, admin.CodeBadSignature, admin.CodeKeyRevoked,
		admin.CodeDigestMismatch, admin.CodeSizeMismatch, admin.CodeConflict, admin.CodeWrongOffset, admin.CodeTooLarge} {
		r.uploadsRejected.WithLabelValues(code)
	}
	return r
}

func (r *recorder) Connected()                         { r.connects.Inc() }
func (r *recorder) Disconnected(reason string)         { r.disconnects.WithLabelValues(reason).Inc() }
func (r *recorder) Rejected(reason string)             { r.rejected.WithLabelValues(reason).Inc() }
func (r *recorder) Birth()                             { r.births.Inc() }
func (r *recorder) Will()                              { r.wills.Inc() }
func (r *recorder) AdminRequest(action, result string) { r.admin.WithLabelValues(action, result).Inc() }
func (r *recorder) FleetEventDropped()                 { r.eventsDropped.Inc() }
func (r *recorder) UploadRejected(reason string)       { r.uploadsRejected.WithLabelValues(reason).Inc() }
func (r *recorder) LoginThrottled(scope string)        { r.loginsThrottled.WithLabelValues(scope).Inc() }
func (r *recorder) Anonymous()                         { r.anonymous.Inc() }

// The rollout.Recorder side.
func (r *recorder) Result(result, hardware, region, version string) {
	r.updates.WithLabelValues(result, orUnknown(hardware), orUnknown(region), orUnknown(version)).Inc()
}
func (r *recorder) Rollback(hardware, region, version string) {
	r.rollbacks.WithLabelValues(orUnknown(hardware), orUnknown(region), orUnknown(version)).Inc()
}
func (r *recorder) Alarm(kind, level string) { r.alarms.WithLabelValues(kind, level).Inc() }
func (r *recorder) HealthFailure(hardware, region, version string) {
	r.healthFailures.WithLabelValues(orUnknown(hardware), orUnknown(region), orUnknown(version)).Inc()
}

// The delivery.Recorder side.
func (r *recorder) BlockRequest(result string) { r.blockRequests.WithLabelValues(result).Inc() }
func (r *recorder) BlockBytes(n int)           { r.blockBytes.Add(float64(n)) }
func (r *recorder) GatewayBlockBytes(n, children int) {
	r.gatewayBytes.Add(float64(n))
	r.gatewayCovered.Add(float64(n) * float64(children))
}
func (r *recorder) DownloadSeconds(s float64)  { r.downloadSeconds.Observe(s) }
func (r *recorder) Event(code string)          { r.deviceEvents.WithLabelValues(code).Inc() }
func (r *recorder) EventDropped(reason string) { r.eventsRefused.WithLabelValues(reason).Inc() }

// stateCollector reads the fleet aggregates and mochi's counters at scrape
// time, so nothing is counted twice and the hot path pays nothing.
type stateCollector struct {
	fleet    *fleet.Registry
	info     *mqtt.Server
	catalog  *release.Catalog
	rollouts *rollout.Engine

	rolloutDevices, rolloutState, rolloutHealth *prometheus.Desc

	connected, registered, byVersion, heartbeats, releases *prometheus.Desc
	gateways, children, childrenPerGateway                 *prometheus.Desc
	mqttGauges                                             []gaugeDesc
	mqttCounters                                           []gaugeDesc
}

type gaugeDesc struct {
	desc *prometheus.Desc
	val  func(s *mqtt.Server) float64
}

func load(p *int64) float64 { return float64(atomic.LoadInt64(p)) }

func newStateCollector(reg *fleet.Registry, srv *mqtt.Server, cat *release.Catalog, ro *rollout.Engine) *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &stateCollector{
		fleet: reg, info: srv, catalog: cat, rollouts: ro,
		rolloutDevices: d("otamq_rollout_devices", "Devices of a rollout by wave and state (every state; rollouts in memory: active and recently finished).", "rollout", "wave", "state"),
		rolloutState:   d("otamq_rollout_state", "1 for a rollout's current state, 0 for the others.", "rollout", "state"),
		rolloutHealth:  d("otamq_rollout_health_failures", "Devices of a rollout's wave whose result is a health failure.", "rollout", "wave"),
		releases:       d("otamq_releases", "Releases uploaded and verified."),
		connected:      d("otamq_devices_connected", "Devices and gateways connected now."),
		heartbeats:     d("otamq_heartbeats_total", "Heartbeats accepted since the broker started."),
		registered:     d("otamq_devices_registered", "Devices and gateways registered and not revoked, by declared hardware (\"unknown\" if none).", "hardware"),
		byVersion:      d("otamq_devices_by_version", "Devices and gateways by reported firmware version and declared hardware (\"unknown\": never reported or declared).", "version", "hardware"),
		gateways:       d("otamq_gateways_connected", "Gateways connected now."),
		children:       d("otamq_gateway_children", "Children of gateways (registered, not revoked) by presence: reachable (online through their gateway), unreachable (their gateway went offline while they were online through it), offline.", "state"),
		childrenPerGateway: d("otamq_gateway_children_per_gateway",
			"Registered, unrevoked gateways by how many unrevoked children are registered under each (a histogram computed at scrape time)."),
		mqttGauges: []gaugeDesc{
			{d("otamq_mqtt_clients_connected", "MQTT clients connected (all roles)."), func(s *mqtt.Server) float64 { return load(&s.Info.ClientsConnected) }},
			{d("otamq_mqtt_inflight", "QoS 1/2 messages in flight to clients."), func(s *mqtt.Server) float64 { return load(&s.Info.Inflight) }},
			{d("otamq_mqtt_subscriptions", "Active subscriptions."), func(s *mqtt.Server) float64 { return load(&s.Info.Subscriptions) }},
			{d("otamq_mqtt_retained", "Retained messages."), func(s *mqtt.Server) float64 { return load(&s.Info.Retained) }},
			{d("otamq_mqtt_sessions", "Sessions held, connected or persistent and disconnected (refreshed every 10 s)."), func(s *mqtt.Server) float64 { return load(&s.Info.ClientsTotal) }},
		},
		mqttCounters: []gaugeDesc{
			{d("otamq_mqtt_messages_received_total", "PUBLISH packets received."), func(s *mqtt.Server) float64 { return load(&s.Info.MessagesReceived) }},
			{d("otamq_mqtt_messages_sent_total", "PUBLISH packets sent."), func(s *mqtt.Server) float64 { return load(&s.Info.MessagesSent) }},
			{d("otamq_mqtt_messages_dropped_total", "Messages dropped because a client's outbound queue was full."), func(s *mqtt.Server) float64 { return load(&s.Info.MessagesDropped) }},
			{d("otamq_mqtt_inflight_dropped_total", "QoS 1/2 messages dropped because a client's inflight store was full."), func(s *mqtt.Server) float64 { return load(&s.Info.InflightDropped) }},
			{d("otamq_mqtt_bytes_received_total", "Bytes received from clients."), func(s *mqtt.Server) float64 { return load(&s.Info.BytesReceived) }},
			{d("otamq_mqtt_bytes_sent_total", "Bytes sent to clients."), func(s *mqtt.Server) float64 { return load(&s.Info.BytesSent) }},
			{d("otamq_mqtt_packets_received_total", "MQTT packets received."), func(s *mqtt.Server) float64 { return load(&s.Info.PacketsReceived) }},
			{d("otamq_mqtt_packets_sent_total", "MQTT packets sent."), func(s *mqtt.Server) float64 { return load(&s.Info.PacketsSent) }},
		},
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connected
	ch <- c.heartbeats
	ch <- c.releases
	ch <- c.registered
	ch <- c.byVersion
	ch <- c.rolloutDevices
	ch <- c.rolloutState
	ch <- c.rolloutHealth
	ch <- c.gateways
	ch <- c.children
	ch <- c.childrenPerGateway
	for _, g := range c.mqttGauges {
		ch <- g.desc
	}
	for _, g := range c.mqttCounters {
		ch <- g.desc
	}
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.fleet.Counts()
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(counts.Online))
	ch <- prometheus.MustNewConstMetric(c.heartbeats, prometheus.CounterValue, float64(counts.Heartbeats))
	ch <- prometheus.MustNewConstMetric(c.releases, prometheus.GaugeValue, float64(c.catalog.Count()))
	// A gauge with labels has no series while nothing is counted, and a
	// dashboard then shows "No data" instead of 0: with no devices, the
	// "unknown" series is exported with value 0.
	if len(counts.Registered) == 0 {
		ch <- prometheus.MustNewConstMetric(c.registered, prometheus.GaugeValue, 0, "unknown")
	}
	for hw, n := range counts.Registered {
		ch <- prometheus.MustNewConstMetric(c.registered, prometheus.GaugeValue, float64(n), orUnknown(hw))
	}
	ch <- prometheus.MustNewConstMetric(c.gateways, prometheus.GaugeValue, float64(counts.GatewaysOnline))
	for _, st := range []string{fleet.ChildReachable, fleet.ChildUnreachable, fleet.ChildOffline} {
		ch <- prometheus.MustNewConstMetric(c.children, prometheus.GaugeValue, float64(counts.Children[st]), st)
	}
	ch <- childrenHistogram(c.childrenPerGateway, counts.ChildrenPerGateway)
	versions := counts.ByVersion
	if len(versions) > maxVersionSeries {
		versions = capVersions(versions, maxVersionSeries)
	}
	if len(versions) == 0 {
		ch <- prometheus.MustNewConstMetric(c.byVersion, prometheus.GaugeValue, 0, "unknown", "unknown")
	}
	for k, n := range versions {
		ch <- prometheus.MustNewConstMetric(c.byVersion, prometheus.GaugeValue, float64(n), orUnknown(k[0]), orUnknown(k[1]))
	}
	if c.rollouts != nil {
		for _, r := range c.rollouts.Metrics() {
			for _, st := range rollout.RolloutStates {
				v := 0.0
				if st == r.State {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(c.rolloutState, prometheus.GaugeValue, v, r.ID, st)
			}
			for _, w := range r.Waves {
				for i, n := range w.Counts {
					ch <- prometheus.MustNewConstMetric(c.rolloutDevices, prometheus.GaugeValue, float64(n), r.ID, w.Name, rollout.States()[i])
				}
				ch <- prometheus.MustNewConstMetric(c.rolloutHealth, prometheus.GaugeValue, float64(w.HealthFailures), r.ID, w.Name)
			}
		}
	}
	for _, g := range c.mqttGauges {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, g.val(c.info))
	}
	for _, g := range c.mqttCounters {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.CounterValue, g.val(c.info))
	}
}

// childrenBuckets are the upper bounds of otamq_gateway_children_per_gateway.
var childrenBuckets = []float64{0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000}

// childrenHistogram renders how many children each gateway has as a
// histogram: gateways are counted, never named.
func childrenHistogram(d *prometheus.Desc, perGateway []int) prometheus.Metric {
	buckets := make(map[float64]uint64, len(childrenBuckets))
	for _, b := range childrenBuckets {
		buckets[b] = 0 // every bucket is exported, empty ones too
	}
	sum := 0.0
	for _, n := range perGateway {
		sum += float64(n)
		for _, b := range childrenBuckets {
			if float64(n) <= b {
				buckets[b]++
			}
		}
	}
	return prometheus.MustNewConstHistogram(d, uint64(len(perGateway)), sum, buckets)
}

// orUnknown names an empty label value: Prometheus drops empty labels, and
// a series without its label would not line up with the others.
func orUnknown(v string) string {
	if v == "" {
		return "unknown"
	}
	return v
}

// capVersions keeps the max-1 most common (version, hardware) pairs and
// folds the rest into version "other" per hardware.
func capVersions(in map[[2]string]int, max int) map[[2]string]int {
	type kv struct {
		k [2]string
		n int
	}
	all := make([]kv, 0, len(in))
	for k, n := range in {
		all = append(all, kv{k, n})
	}
	// Partial selection is not worth it at scrape frequency; sort.
	sortKV := func(a, b kv) int {
		if a.n != b.n {
			return b.n - a.n
		}
		if a.k[0] != b.k[0] {
			if a.k[0] < b.k[0] {
				return -1
			}
			return 1
		}
		if a.k[1] < b.k[1] {
			return -1
		}
		return 1
	}
	slices.SortFunc(all, sortKV)
	out := make(map[[2]string]int, max)
	for i, e := range all {
		if i < max-1 {
			out[e.k] = e.n
			continue
		}
		out[[2]string{"other", e.k[1]}] += e.n
	}
	return out
}

// newRegistry returns the private registry with the Go and process
// collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
