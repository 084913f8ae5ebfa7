package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Build is a build description: what `otactl sign` writes into a manifest
// besides the image's size and digest, which it measures itself. Its file
// format is YAML with the field names below; unknown fields are an error.
// config/build.example.yaml documents it.
type Build struct {
	// Version is the image's semantic version. Required.
	Version string `yaml:"version"`
	// BuildID identifies the build (CI run, commit, timestamp). Optional.
	BuildID string `yaml:"build_id"`
	// Hardware lists the hardware models the image runs on. Required.
	Hardware []string `yaml:"hardware"`
	// MinBootloader is the oldest bootloader version the image needs.
	// Optional.
	MinBootloader string `yaml:"min_bootloader"`
	// SecureVersion is the anti-rollback counter. Default 0.
	SecureVersion *Uint `yaml:"secure_version"`
	// Kind is firmware, configuration or feature-flags. Default firmware.
	Kind string `yaml:"kind"`
	// Sequence is the manifest's sequence number. Default: the Unix time of
	// signing, in seconds (see DefaultSequence).
	Sequence *Uint `yaml:"sequence"`
	// Components is the SBOM summary. Optional.
	Components []BuildComponent `yaml:"components"`

	dir string // where Components' files are relative to
}

// BuildComponent is one component of a build description: its SHA-256 is
// given either as Digest (64 hex digits) or as File, a file to hash whose
// path is relative to the build description's directory.
type BuildComponent struct {
	Name    string `yaml:"name"`
	Version string `yaml:"version"`
	Digest  string `yaml:"digest"`
	File    string `yaml:"file"`
}

// Uint is an unsigned integer in a build description. Unlike a plain Go
// integer field of the YAML decoder, it refuses floats ("1.5" would
// otherwise become 1) and quoted strings.
type Uint uint64

// UnmarshalYAML accepts only a YAML integer that fits in 64 bits unsigned.
func (u *Uint) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		return fmt.Errorf("line %d: %q is not an unsigned integer", n.Line, n.Value)
	}
	v, err := strconv.ParseUint(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil {
		return fmt.Errorf("line %d: %q is not an unsigned integer", n.Line, n.Value)
	}
	*u = Uint(v)
	return nil
}

// DefaultSequence is the sequence number of a build description without
// one: the signing time in Unix seconds. It needs no state on the signing
// machine and increases strictly across releases signed at least a second
// apart on machines with a correct clock, which is what devices need
// (they refuse a sequence lower than the last they accepted). A fleet that
// numbers its releases itself sets sequence explicitly, and then must keep
// doing so: a small explicit number after a time-based one would be refused
// by devices.
func DefaultSequence(now time.Time) uint64 { return uint64(now.Unix()) }

// ParseBuild reads a build description. Component files are looked up
// relative to dir. Unknown fields, several YAML documents and invalid
// values are errors wrapping ErrBuild; every problem is reported at once.
func ParseBuild(data []byte, dir string) (*Build, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var b Build
	if err := dec.Decode(&b); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty", ErrBuild)
		}
		return nil, fmt.Errorf("%w: %v", ErrBuild, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrBuild)
	}
	b.dir = dir
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return &b, nil
}

// LoadBuild reads the build description at path; component files are
// relative to its directory.
func LoadBuild(path string) (*Build, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, err := ParseBuild(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// Validate checks what can be checked without the image and component
// files, reporting every problem at once in an error wrapping ErrBuild.
func (b *Build) Validate() error {
	var p []string
	if b.Kind != "" {
		if _, err := ParseKind(b.Kind); err != nil {
			p = append(p, err.Error())
		}
	}
	if b.SecureVersion != nil && *b.SecureVersion > 1<<32-1 {
		p = append(p, fmt.Sprintf("secure_version %d is above %d", *b.SecureVersion, uint32(1<<32-1)))
	}
	for i, c := range b.Components {
		where := fmt.Sprintf("components[%d]", i)
		if c.Name != "" {
			where += " (" + c.Name + ")"
		}
		switch {
		case c.Digest == "" && c.File == "":
			p = append(p, where+": give digest or file")
		case c.Digest != "" && c.File != "":
			p = append(p, where+": give digest or file, not both")
		case c.Digest != "":
			if _, err := ParseDigest(strings.ToLower(c.Digest)); err != nil {
				p = append(p, where+": "+err.Error())
			}
		}
	}
	// Everything else (required fields, semver, lengths, duplicates) is the
	// manifest's own validation; run it on what is known without files.
	m, _ := b.manifest(1, Digest{1}, time.Unix(1, 0), false)
	if err := m.Validate(); err != nil {
		p = append(p, strings.TrimPrefix(err.Error(), ErrMalformed.Error()+": "))
	}
	if len(p) > 0 {
		return fmt.Errorf("%w: %s", ErrBuild, strings.Join(p, "; "))
	}
	return nil
}

// Manifest returns the manifest for an image of size bytes with SHA-256
// digest, signed at now: it hashes the component files and fills in the
// default sequence. Errors wrap ErrBuild.
func (b *Build) Manifest(size uint64, digest Digest, now time.Time) (*Manifest, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	m, err := b.manifest(size, digest, now, true)
	if err == nil {
		err = m.Validate()
	}
	if err != nil {
		if errors.Is(err, ErrBuild) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrBuild, err)
	}
	return m, nil
}

// manifest builds the manifest. With hashFiles false (for Validate, which
// must not read files and reports problems itself) it never fails: digests
// it cannot know or parse are a placeholder and an unknown kind is left 0.
func (b *Build) manifest(size uint64, digest Digest, now time.Time, hashFiles bool) (*Manifest, error) {
	m := &Manifest{
		Sequence: DefaultSequence(now), Version: b.Version, BuildID: b.BuildID, Hardware: b.Hardware,
		MinBootloader: b.MinBootloader, ImageSize: size, ImageDigest: digest,
	}
	if b.Sequence != nil {
		m.Sequence = uint64(*b.Sequence)
	}
	if b.SecureVersion != nil {
		m.SecureVersion = uint32(*b.SecureVersion)
	}
	if b.Kind != "" {
		k, err := ParseKind(b.Kind)
		if err != nil && hashFiles {
			return nil, err
		}
		m.Kind = k
	}
	for i, c := range b.Components {
		mc := Component{Name: c.Name, Version: c.Version, Digest: Digest{1}}
		switch {
		case c.Digest != "":
			d, err := ParseDigest(strings.ToLower(c.Digest))
			if err != nil && hashFiles {
				return nil, fmt.Errorf("components[%d]: %w", i, err)
			}
			if err == nil {
				mc.Digest = d
			}
		case hashFiles && c.File != "":
			d, err := hashFile(filepath.Join(b.dir, c.File))
			if err != nil {
				return nil, fmt.Errorf("components[%d] (%s): %w", i, c.Name, err)
			}
			mc.Digest = d
		}
		m.Components = append(m.Components, mc)
	}
	return m, nil
}

func hashFile(path string) (Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return Digest{}, err
	}
	defer f.Close()
	_, d, err := HashImage(f)
	return d, err
}
