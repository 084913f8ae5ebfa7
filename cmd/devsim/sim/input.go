package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/otamq/otamq/cmd/otactl/rpc"
	"github.com/otamq/otamq/ota/fleet"
)

// maxLine bounds one line of a tokens or devices file.
const maxLine = 64 * 1024

// Credential is a device ID and its token.
type Credential struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// ReadTokens reads the tokens file `otactl device import` writes: CSV with
// the header row "id,token", or JSON lines of {"id", "token"}. Every
// problem is reported at once, with its line.
func ReadTokens(r io.Reader) ([]Credential, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var out []Credential
	var problems []error
	seen := map[string]int{}
	add := func(line int, c Credential) {
		switch err := fleet.ValidID(c.ID); {
		case err != nil:
			problems = append(problems, fmt.Errorf("line %d: %w", line, err))
		case c.Token == "":
			problems = append(problems, fmt.Errorf("line %d: %s has no token", line, c.ID))
		case seen[c.ID] != 0:
			problems = append(problems, fmt.Errorf("line %d: %s already on line %d", line, c.ID, seen[c.ID]))
		default:
			seen[c.ID] = line
			out = append(out, c)
		}
	}
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(make([]byte, 4096), maxLine)
		for line := 1; sc.Scan(); line++ {
			text := strings.TrimSpace(sc.Text())
			if text == "" {
				continue
			}
			var c Credential
			dec := json.NewDecoder(strings.NewReader(text))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				problems = append(problems, fmt.Errorf("line %d: %v", line, err))
				continue
			}
			add(line, c)
		}
		if err := sc.Err(); err != nil {
			problems = append(problems, err)
		}
	} else {
		cr := csv.NewReader(bytes.NewReader(raw))
		cr.FieldsPerRecord = 2
		recs, err := cr.ReadAll()
		if err != nil {
			return nil, err
		}
		if len(recs) == 0 || recs[0][0] != "id" || recs[0][1] != "token" {
			return nil, errors.New(`want the header row "id,token" (the file otactl device import writes) or JSON lines`)
		}
		for i, rec := range recs[1:] {
			add(i+2, Credential{ID: rec[0], Token: rec[1]})
		}
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	if len(out) == 0 {
		return nil, errors.New("no device in the tokens file")
	}
	return out, nil
}

// ReadSpecs reads a devices file: JSON lines, each a DeviceSpec ({"id",
// "token", "profile", "hardware", "version", "utc_offset_minutes", ...};
// unknown fields are an error). Every problem is reported at once.
func ReadSpecs(r io.Reader) ([]DeviceSpec, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLine)
	var out []DeviceSpec
	var problems []error
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		var s DeviceSpec
		dec := json.NewDecoder(strings.NewReader(text))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			problems = append(problems, fmt.Errorf("line %d: %v", line, err))
			continue
		}
		if err := fleet.ValidID(s.ID); err != nil {
			problems = append(problems, fmt.Errorf("line %d: %w", line, err))
			continue
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	return out, nil
}

// Registration is a device to register through the admin API (the
// attributes of device/register).
type Registration struct {
	ID           string            `json:"id"`
	Hardware     string            `json:"hardware,omitempty"`
	Region       string            `json:"region,omitempty"`
	Connectivity string            `json:"connectivity,omitempty"`
	Groups       []string          `json:"groups,omitempty"`
	Tags         map[string]string `json:"tags,omitempty"`
}

// RegisterBatch is how many devices Register sends per device/register
// request (the broker takes up to 1,000; replies carry every token).
const RegisterBatch = 500

// Register registers regs with batch device/register requests and returns
// their tokens. Each batch is all or nothing on the broker; a refused
// batch stops Register, which returns the credentials registered so far
// with the error.
func Register(ctx context.Context, c *rpc.Client, regs []Registration) ([]Credential, error) {
	var out []Credential
	for start := 0; start < len(regs); start += RegisterBatch {
		batch := regs[start:min(start+RegisterBatch, len(regs))]
		var res struct {
			Registered []Credential `json:"registered"`
		}
		if err := c.Call(ctx, "device/register", map[string]any{"devices": batch}, &res); err != nil {
			var re *rpc.RemoteError
			if errors.As(err, &re) {
				for _, r := range re.Refused {
					err = fmt.Errorf("%w; %s: %s", err, r.ID, r.Message)
				}
			}
			return out, fmt.Errorf("register devices %d to %d: %w", start+1, start+len(batch), err)
		}
		if len(res.Registered) != len(batch) {
			return out, fmt.Errorf("register devices %d to %d: %d registered", start+1, start+len(batch), len(res.Registered))
		}
		out = append(out, res.Registered...)
	}
	return out, nil
}

// WriteTokens writes credentials in the CSV format ReadTokens reads.
func WriteTokens(w io.Writer, creds []Credential) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"id", "token"})
	for _, c := range creds {
		_ = cw.Write([]string{c.ID, c.Token})
	}
	cw.Flush()
	return cw.Error()
}
