package fleet

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"
)

// Role is what a client may do.
type Role string

// Roles (docs/OPERATORS.md, "Identities and access").
const (
	RoleDevice   Role = "device"
	RoleGateway  Role = "gateway"
	RoleOperator Role = "operator"
	RoleObserver Role = "observer"
)

// IsDevice reports whether r is a role of the device side (device or
// gateway), as opposed to the people side (operator, observer).
func (r Role) IsDevice() bool { return r == RoleDevice || r == RoleGateway }

// Valid reports whether r is a defined role.
func (r Role) Valid() bool {
	return r == RoleDevice || r == RoleGateway || r == RoleOperator || r == RoleObserver
}

// AuthMethod is how a client proves its identity.
type AuthMethod string

// Authentication methods.
const (
	// AuthToken: MQTT password = a per-device token. Such a device may also
	// connect with a fleet-CA certificate whose CN is its ID.
	AuthToken AuthMethod = "token"
	// AuthCert: only a client certificate from the fleet CA whose common name
	// equals the client ID.
	AuthCert AuthMethod = "cert"
	// AuthPassword: operators and observers with a password (argon2id hash).
	// They may also connect with a certificate.
	AuthPassword AuthMethod = "password"
)

// Limits on operator-supplied attributes.
const (
	MaxIDLen     = 64
	MaxGroups    = 32
	MaxTags      = 32
	MaxNameLen   = 64  // hardware, region, group and tag key
	MaxTagValLen = 128 // tag value
	MaxReasonLen = 256
)

var (
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	namePattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)
	// reservedIDs clash with the broker's own topics under the prefix
	// (dm/admin/..., dm/fleet/...) or with mochi's inline client, whose
	// session a client of that ID would take over.
	reservedIDs = []string{"admin", "fleet", "inline"}
)

// connectivities a device may be declared with.
var connectivities = []string{"wifi", "cellular", "ethernet", "via_gateway"}

// Device is a registered client as operators see it. Values handed out by
// the registry are snapshots: never modify them.
type Device struct {
	ID           string            `json:"id"`
	Role         Role              `json:"role"`
	Auth         AuthMethod        `json:"auth"`
	Hardware     string            `json:"hardware,omitempty"`
	Region       string            `json:"region,omitempty"`
	Connectivity string            `json:"connectivity,omitempty"`
	Groups       []string          `json:"groups,omitempty"`
	Tags         map[string]string `json:"tags,omitempty"`
	Parent       string            `json:"parent,omitempty"`
	Revoked      bool              `json:"revoked,omitempty"`
	RevokedAt    *time.Time        `json:"revoked_at,omitempty"`
	RevokeReason string            `json:"revoke_reason,omitempty"`
	Created      time.Time         `json:"created"`
	Updated      time.Time         `json:"updated"`
}

// record is a Device as stored: with its credential hash.
type record struct {
	Device
	Secret string `json:"secret,omitempty"`
}

// ValidID checks a client ID against the pattern of docs/PROTOCOL.md
// ("Connecting") and the reserved names.
func ValidID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w: id %s must match [A-Za-z0-9._-]{1,64}", ErrInvalid, Quote(id))
	}
	if slices.Contains(reservedIDs, id) {
		return fmt.Errorf("%w: id %s is reserved for the broker's own topics", ErrInvalid, Quote(id))
	}
	return nil
}

// Attributes are the operator-set attributes of a device.
type Attributes struct {
	Hardware     string            `json:"hardware,omitempty"`
	Region       string            `json:"region,omitempty"`
	Connectivity string            `json:"connectivity,omitempty"`
	Groups       []string          `json:"groups,omitempty"`
	Tags         map[string]string `json:"tags,omitempty"`
	Parent       string            `json:"parent,omitempty"`
}

// validate reports every problem of a at once.
func (a Attributes) validate() error {
	var errs []error
	name := func(field, v string) {
		if v != "" && !namePattern.MatchString(v) {
			errs = append(errs, fmt.Errorf("%s %s must match [A-Za-z0-9._:-]{1,64}", field, Quote(v)))
		}
	}
	name("hardware", a.Hardware)
	name("region", a.Region)
	if a.Connectivity != "" && !slices.Contains(connectivities, a.Connectivity) {
		errs = append(errs, fmt.Errorf("connectivity %s must be one of %v", Quote(a.Connectivity), connectivities))
	}
	if len(a.Groups) > MaxGroups {
		errs = append(errs, fmt.Errorf("%d groups, limit %d", len(a.Groups), MaxGroups))
	}
	for _, g := range a.Groups {
		if g == "" {
			errs = append(errs, errors.New("empty group name"))
		}
		name("group", g)
	}
	if len(a.Tags) > MaxTags {
		errs = append(errs, fmt.Errorf("%d tags, limit %d", len(a.Tags), MaxTags))
	}
	for k, v := range a.Tags {
		if k == "" {
			errs = append(errs, errors.New("empty tag key"))
		}
		name("tag key", k)
		if len(v) > MaxTagValLen {
			errs = append(errs, fmt.Errorf("tag %s value is %d bytes, limit %d", Quote(k), len(v), MaxTagValLen))
		}
	}
	if a.Parent != "" {
		if err := ValidID(a.Parent); err != nil {
			errs = append(errs, fmt.Errorf("parent: %w", err))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
}

func normalizeGroups(g []string) []string {
	if len(g) == 0 {
		return nil
	}
	out := slices.Clone(g)
	slices.Sort(out)
	return slices.Compact(out)
}

// InGroup reports whether d is a member of group g.
func (d *Device) InGroup(g string) bool { return slices.Contains(d.Groups, g) }
