package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestAdminLimits(t *testing.T) {
	f, err := Parse([]byte("admin:\n  rate_limit: 5\n  rate_burst: 20\n  audit_max_records: 5000\n  audit_max_age: 720h\n"))
	if err != nil {
		t.Fatal(err)
	}
	o, err := f.Options(io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.AdminRate != 5 || o.AdminBurst != 20 || o.AuditMaxRecords != 5000 || o.AuditMaxAge != 720*time.Hour {
		t.Fatalf("options %+v", o)
	}
	// Off is negative.
	f, _ = Parse([]byte("admin:\n  rate_limit: -1\n  audit_max_records: -1\n  audit_max_age: -1s\n"))
	if _, err := f.Options(io.Discard); err != nil {
		t.Fatalf("limits off: %v", err)
	}
	f, _ = Parse([]byte("admin:\n  rate_burst: -3\n  audit_max_age: 10s\n"))
	_, err = f.Options(io.Discard)
	for _, want := range []string{"rate_burst", "audit_max_age"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}
