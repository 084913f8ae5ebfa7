package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// demoDev is one device of the demo's fleet: what otactl device import
// registers and what devsim simulates.
type demoDev struct {
	id, group, hardware, region, link string
	offset                            int // UTC offset in minutes
	bad                               bool
}

type demoFleetSpec []demoDev

// demoFleet is n devices dev-001…: 5 % canary, 10 % internal, 15 % pilot,
// the rest field; every fourth esp32-v3, the others esp32-v2; regions eu,
// us and apac in turn (with their UTC offsets); mostly Wi-Fi, some
// cellular and ethernet. The canary devices fail the health check of the
// bad release (devsim's bad-health profile for that version only).
func demoFleet(n int) demoFleetSpec {
	canary, internal, pilot := n*5/100, n*10/100, n*15/100
	regions := []struct {
		name   string
		offset int
	}{{"eu", 60}, {"us", -300}, {"apac", 330}}
	links := []string{"wifi", "wifi", "wifi", "cellular", "ethernet"}
	width := len(fmt.Sprint(n))
	f := make(demoFleetSpec, n)
	for i := range f {
		d := &f[i]
		d.id = fmt.Sprintf("dev-%0*d", width, i+1)
		switch {
		case i < canary:
			d.group, d.bad = "canary", true
		case i < canary+internal:
			d.group = "internal"
		case i < canary+internal+pilot:
			d.group = "pilot"
		default:
			d.group = "field"
		}
		d.hardware = "esp32-v2"
		if i%4 == 3 {
			d.hardware = "esp32-v3"
		}
		r := regions[i%len(regions)]
		d.region, d.offset = r.name, r.offset
		d.link = links[i%len(links)]
	}
	return f
}

// write writes fleet.csv (for otactl device import) and devices.jsonl (for
// devsim --devices) into dir.
func (f demoFleetSpec) write(dir string) error {
	var csv, jl strings.Builder
	csv.WriteString("id,hardware,region,connectivity,groups\n")
	enc := json.NewEncoder(&jl)
	links := map[string]int{"wifi": 0, "cellular": 1, "ethernet": 2}
	for _, d := range f {
		fmt.Fprintf(&csv, "%s,%s,%s,%s,%s\n", d.id, d.hardware, d.region, d.link, d.group)
		line := map[string]any{"id": d.id, "hardware": d.hardware, "utc_offset_minutes": d.offset, "connectivity": links[d.link]}
		if d.bad {
			line["profile"], line["fault_versions"] = "bad-health", []string{demoBad}
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.csv"), []byte(csv.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "devices.jsonl"), []byte(jl.String()), 0o644)
}

func (f demoFleetSpec) count(group string) int {
	n := 0
	for _, d := range f {
		if d.group == group {
			n++
		}
	}
	return n
}

// describe says what the fleet is made of, in one line.
func (f demoFleetSpec) describe() string {
	by := func(key func(demoDev) string) map[string]int {
		m := map[string]int{}
		for _, d := range f {
			m[key(d)]++
		}
		return m
	}
	return fmt.Sprintf("groups %s; hardware %s; regions %s; connectivity %s",
		counts(by(func(d demoDev) string { return d.group }), []string{"canary", "internal", "pilot", "field"}),
		counts(by(func(d demoDev) string { return d.hardware }), nil),
		counts(by(func(d demoDev) string { return d.region }), []string{"eu", "us", "apac"}),
		counts(by(func(d demoDev) string { return d.link }), []string{"wifi", "cellular", "ethernet"}))
}
