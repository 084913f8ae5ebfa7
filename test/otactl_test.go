package test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/otamq/otamq/ota/fleet"
)

// otactl runs the otactl binary against b as the test operator.
func (b *tb) otactl(stdin string, args ...string) (stdout, stderr string, code int) {
	b.t.Helper()
	cmd := exec.Command(binary(b.t, "otactl"), args...)
	cmd.Env = append(os.Environ(), "OTAMQ_URL="+b.url(), "OTAMQ_USER="+opID, "OTAMQ_PASSWORD="+opPassword)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			b.t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

func TestOtactl(t *testing.T) {
	b := startBroker(t)
	must := func(args ...string) string {
		t.Helper()
		out, errOut, code := b.otactl("", args...)
		if code != 0 {
			t.Fatalf("otactl %v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}

	out := must("device", "register", "gw-1", "--role", "gateway", "--hardware", "rpi4", "--region", "eu")
	if !strings.Contains(out, "registered gateway gw-1") || !strings.Contains(out, "token: ") {
		t.Fatalf("register output:\n%s", out)
	}
	// Flags after the ID, repeated flags, JSON output for scripts.
	out = must("device", "register", "dev-1", "--hardware", "esp32-v2", "--region", "eu", "--group", "canary", "--group", "lab",
		"--tag", "floor=3", "--parent", "gw-1", "--json")
	var reg struct {
		Device struct {
			ID     string
			Groups []string
			Parent string
		}
		Token string
	}
	if err := json.Unmarshal([]byte(out), &reg); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	if reg.Device.ID != "dev-1" || len(reg.Device.Groups) != 2 || reg.Device.Parent != "gw-1" || reg.Token == "" {
		t.Fatalf("registered %+v", reg)
	}
	// The token works for the device.
	d := b.device("dev-1", reg.Token)
	if rc := d.publish("dm/dev-1/birth", birthPayload); rc != 0 {
		t.Fatalf("birth: 0x%02x", rc)
	}
	b.waitStatus("dev-1", "birth", func(s fleet.Status) bool { return s.Firmware == "1.0.0" })

	out = must("device", "list", "--region", "eu")
	for _, want := range []string{"ID", "dev-1", "gw-1", "online", "1.0.0", "2 shown"} {
		if !strings.Contains(out, want) {
			t.Errorf("device list lacks %q:\n%s", want, out)
		}
	}
	out = must("device", "list", "--online")
	// gw-1 is offline: not listed (dev-1's GATEWAY column names it).
	if !strings.Contains(out, "\ndev-1 ") || strings.Contains(out, "\ngw-1 ") {
		t.Errorf("--online lists:\n%s", out)
	}
	out = must("device", "list", "--limit", "1", "--all")
	if !strings.Contains(out, "dev-1") || !strings.Contains(out, "gw-1") {
		t.Errorf("--all does not follow pages:\n%s", out)
	}
	out = must("device", "get", "dev-1")
	for _, want := range []string{"parent:", "gw-1", "firmware:", "1.0.0", "tags:", "floor=3"} {
		if !strings.Contains(out, want) {
			t.Errorf("device get lacks %q:\n%s", want, out)
		}
	}

	out = must("device", "update", "dev-1", "--region", "us", "--no-groups", "--rotate-token")
	if !strings.Contains(out, "token: ") {
		t.Fatalf("rotate gave no token:\n%s", out)
	}
	select {
	case <-d.cli.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("device with a rotated token still connected")
	}
	must("device", "revoke", "gw-1", "--reason", "decommissioned")
	out = must("device", "list", "--revoked")
	if !strings.Contains(out, "gw-1") || !strings.Contains(out, "revoked") {
		t.Errorf("revoked list:\n%s", out)
	}

	// Operators.
	out, errOut, code := b.otactl("a password of a new operator\n", "operator", "add", "ann", "--password-stdin")
	if code != 0 || !strings.Contains(out, "added operator ann") || strings.Contains(out, "password:") {
		t.Fatalf("operator add: %d\n%s%s", code, out, errOut)
	}
	out = must("operator", "add", "obs", "--observer")
	if !strings.Contains(out, "password: ") {
		t.Fatalf("no generated password:\n%s", out)
	}
	out = must("operator", "list")
	if !strings.Contains(out, "ann") || !strings.Contains(out, "observer") {
		t.Errorf("operator list:\n%s", out)
	}

	// The audit log has it all, newest first.
	out = must("audit", "--limit", "100")
	for _, want := range []string{"device/register", "device/update", "device/revoke", "operator/add", opID} {
		if !strings.Contains(out, want) {
			t.Errorf("audit lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "a password of a new operator") {
		t.Fatal("the audit log shows a password")
	}

	// Errors are clear, with exit status 1 for refusals and 2 for usage.
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"device", "register", "dev-1"}, 1, "already registered"},
		{[]string{"device", "get", "nope"}, 1, "not_found"},
		{[]string{"device", "register", "bad id!"}, 1, "must match"},
		{[]string{"device", "update", "dev-1"}, 2, "nothing to change"},
		{[]string{"device", "frobnicate"}, 2, "unknown command"},
		{[]string{"device", "get"}, 2, "exactly one"},
		{[]string{"--password", "wrong", "device", "list"}, 1, "not authorized"},
		{[]string{"--url", "mqtt://127.0.0.1:1", "device", "list"}, 1, "is otamq running"},
	}
	for _, c := range cases {
		out, errOut, code := b.otactl("", c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("otactl %v: exit %d, want %d with %q\n%s%s", c.args, code, c.code, c.want, out, errOut)
		}
	}
	// Observers may read but not change.
	cmd := exec.Command(binary(t, "otactl"), "device", "list")
	cmd.Env = append(os.Environ(), "OTAMQ_URL="+b.url(), "OTAMQ_USER=obs", "OTAMQ_PASSWORD=wrong")
	if err := cmd.Run(); err == nil {
		t.Fatal("observer with a wrong password listed devices")
	}
}

// TestAdminWithMosquittoRR: the admin API works from any MQTT v5 client, here
// mosquitto_rr, as docs/OPERATORS.md shows.
func TestAdminWithMosquittoRR(t *testing.T) {
	b := startBroker(t)
	b.register("dev-7", "device", "", map[string]any{"hardware": "esp32-v2"})
	host, port := b.hostPort()
	rr := func(topic, body string) (map[string]any, string) {
		out, err := mosq(t, "mosquitto_rr", "-h", host, "-p", port, "-V", "mqttv5", "-i", opID, "-u", opID, "-P", opPassword,
			"-t", topic, "-e", "dm/admin/reply/"+opID+"/1", "-m", body, "-W", "10", "-d")
		if err != nil {
			t.Fatalf("mosquitto_rr %s: %v\n%s", topic, err, out)
		}
		// -d: on a failure the tool's protocol trace is in the message;
		// the reply is its last line.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var reply map[string]any
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &reply); err != nil {
			t.Fatalf("reply is not JSON: %v\n%s", err, out)
		}
		return reply, out
	}
	reply, out := rr("dm/admin/device/get", `{"id":"dev-7"}`)
	if reply["ok"] != true || !strings.Contains(out, `"hardware":"esp32-v2"`) {
		t.Fatalf("device/get: %s", out)
	}
	reply, out = rr("dm/admin/device/get", `{"id":"dev-7","extra":1}`)
	if reply["ok"] != false || !strings.Contains(out, "bad_request") || !strings.Contains(out, "extra") {
		t.Fatalf("unknown field: %s", out)
	}
}
