// Package version says which build of otamq a binary is, for the
// --version flag of otamq and otactl.
package version

import (
	"runtime"
	"runtime/debug"
)

// version is set at link time by `make build`
// (-ldflags "-X github.com/otamq/otamq/internal/version.version=...", the
// output of git describe). Without it, the module version and VCS revision
// Go stamped into the binary are used, if any.
var version string

// String returns the build's version followed by the Go release that built
// it, e.g. "v0.3.0-12-g1a2b3c4 (go1.26.8)".
func String() string {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok {
			if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				v = bi.Main.Version
			} else {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" && len(s.Value) >= 12 {
						v = "devel " + s.Value[:12]
					}
				}
			}
		}
	}
	return v + " (" + runtime.Version() + ")"
}
