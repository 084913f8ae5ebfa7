package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/otamq/otamq/broker"
)

var (
	importN      = flag.Int("import-devices", 20_000, "import benchmark: devices in the fleet file")
	importRounds = flag.Int("import-rounds", 3, "import benchmark: rounds, each on a fresh broker (the median is reported)")
)

// benchImport: `otactl device import` end to end, as an operator runs it:
// the otactl process (built here), its login, the local check, the
// broker's dry run of every batch, the registration batches (fsync on,
// group commit, one audit record per device) and the tokens file synced
// after each batch, against a broker with its default settings (the admin
// rate limit included).
func benchImport() error {
	dir, err := os.MkdirTemp("", "otamq-bench-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	otactl := filepath.Join(dir, "otactl")
	build := exec.Command("go", "build", "-o", otactl, "./cmd/otactl")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build otactl: %v\n%s", err, out)
	}
	n := *importN
	var csv strings.Builder
	csv.WriteString("id,role,hardware,region,groups,tags,parent\n")
	gateways := n / 100
	for g := range gateways {
		fmt.Fprintf(&csv, "gw-%05d,gateway,rpi4,eu,,site=plant-%d,\n", g, g%7)
	}
	for i := range n - gateways {
		fmt.Fprintf(&csv, "dev-%06d,device,esp32-v2,eu,canary;line-%d,site=plant-%d;floor=%d,gw-%05d\n", i, i%4, i%7, i%3, i%gateways)
	}
	fleetFile := filepath.Join(dir, "fleet.csv")
	if err := os.WriteFile(fleetFile, []byte(csv.String()), 0o600); err != nil {
		return err
	}
	fmt.Printf("== fleet import: otactl device import of %d devices (%d gateways), default batches, broker defaults (fsync on)\n", n, gateways)
	var rates []float64
	for round := range *importRounds {
		data := filepath.Join(dir, fmt.Sprintf("broker-%d", round))
		b, err := broker.New(broker.Options{DataDir: data, TCPAddr: "127.0.0.1:0", HTTPAddr: "off",
			FirstOperator: "bench", FirstOperatorPassword: benchOperatorPassword, Logger: quiet})
		if err != nil {
			return err
		}
		if err := b.Start(); err != nil {
			return err
		}
		tokens := filepath.Join(dir, fmt.Sprintf("tokens-%d.csv", round))
		cmd := exec.Command(otactl, "device", "import", fleetFile, "--tokens", tokens)
		cmd.Env = append(os.Environ(), "OTAMQ_URL=mqtt://"+b.Addr(), "OTAMQ_USER=bench", "OTAMQ_PASSWORD="+benchOperatorPassword)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err = cmd.Run()
		took := time.Since(start)
		registered := b.Fleet().Len() - 1 // the operator
		_ = b.Shutdown(context.Background())
		if err != nil {
			return fmt.Errorf("otactl device import: %v\n%s", err, out.String())
		}
		if registered != n {
			return fmt.Errorf("%d devices registered, want %d", registered, n)
		}
		rate := float64(n) / took.Seconds()
		rates = append(rates, rate)
		fmt.Printf("  round %d: %d devices in %.2f s: %.0f devices/s end to end\n", round+1, n, took.Seconds(), rate)
	}
	slices.Sort(rates)
	fmt.Printf("otactl device import: %.0f devices/s, median of %d rounds (target >= 2000)\n", rates[len(rates)/2], len(rates))
	return nil
}
