package rollout

import (
	"fmt"

	"github.com/Masterminds/semver/v3"
)

// hop checks the version rules for a device going from one firmware
// version to another, and returns why not ("" when allowed): patch always;
// minor unless versions.minor is false; major only with versions.major;
// downgrades only with versions.downgrade and only within a patch level.
func (v Versions) hop(from, to *semver.Version) string {
	switch c := to.Compare(from); {
	case c == 0:
		return fmt.Sprintf("already runs %s", to)
	case c < 0:
		if !v.Downgrade {
			return fmt.Sprintf("version rule: %s to %s is a downgrade (versions.downgrade is false)", from, to)
		}
		if to.Major() != from.Major() || to.Minor() != from.Minor() {
			return fmt.Sprintf("version rule: %s to %s is a downgrade across a minor or major version (downgrades stay within a patch level)", from, to)
		}
		return ""
	}
	switch {
	case to.Major() != from.Major():
		if !v.Major {
			return fmt.Sprintf("version rule: %s to %s is a major upgrade (versions.major is false)", from, to)
		}
	case to.Minor() != from.Minor():
		if v.Minor != nil && !*v.Minor {
			return fmt.Sprintf("version rule: %s to %s is a minor upgrade (versions.minor is false)", from, to)
		}
	}
	return ""
}
