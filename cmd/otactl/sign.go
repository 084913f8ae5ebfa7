package main

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/otamq/otamq/ota/manifest"
	"github.com/otamq/otamq/ota/wire"
)

// The offline commands: keygen, sign and verify never connect to a broker.
// The private key stays on the operator's machine.

var keygenCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("out", ".", "directory for the key files (created with mode 0700 if missing)")
		fs.String("name", "release", "file name: writes NAME.key and NAME.pub")
	},
	run: func(_ context.Context, e *env, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		dir, name := flagStr(e.fs, "out"), flagStr(e.fs, "name")
		if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
			return usagef("--name %q: want a file name (the directory goes in --out)", name)
		}
		priv, pub := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
		for _, p := range []string{priv, pub} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("refusing to overwrite %s: a signing key is never replaced by accident (remove it first, or choose another --name)", p)
			}
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		key, err := manifest.GenerateKey()
		if err != nil {
			return err
		}
		if err := manifest.WritePrivateKey(priv, key); err != nil {
			return err
		}
		if err := manifest.WritePublicKey(pub, &key.PublicKey); err != nil {
			_ = os.Remove(priv) // just written by us: no key pair without its public half
			return err
		}
		k, err := newKeyInfo(&key.PublicKey, filepath.Base(pub))
		if err != nil {
			return err
		}
		if e.g.json {
			return e.printJSON(struct {
				keyInfo
				PrivateKey string `json:"private_key"`
				PublicKey  string `json:"public_key"`
			}{k, priv, pub})
		}
		fmt.Fprintf(e.out, "wrote %s (private, mode 0600: keep it offline) and %s (public: otactl key add %s)\n\n", priv, pub, pub)
		printKeyInfo(e.out, k)
		return nil
	},
}

var signCmd = command{
	flags: func(fs *flag.FlagSet) {
		// --key is the global client key flag, reused: offline commands
		// have no connection. It must be given after "sign" (see below).
		fs.String("build", "", "build description (YAML, see config/build.example.yaml)")
		fs.String("out", "", "signed manifest file (default IMAGE.manifest)")
		fs.Bool("force", false, "replace an existing manifest file")
	},
	run: func(_ context.Context, e *env, args []string) error {
		if len(args) != 1 {
			return usagef("want exactly one IMAGE, got %d arguments", len(args))
		}
		image := args[0]
		keyFile, buildFile := flagStr(e.fs, "key"), flagStr(e.fs, "build")
		// The global --key defaults to OTAMQ_KEY, the mTLS client key: never
		// sign with that by accident.
		if !flagGiven(e.fs, "key") || keyFile == "" {
			return usagef("--key KEY (the release signing key from otactl keygen) must follow \"sign\"; OTAMQ_KEY is not used for signing")
		}
		if buildFile == "" {
			return usagef("--build BUILD.yaml is required")
		}
		out := flagStr(e.fs, "out")
		if out == "" {
			out = image + ".manifest"
		}
		force := flagBool(e.fs, "force")
		if _, err := os.Lstat(out); err == nil && !force {
			return fmt.Errorf("refusing to overwrite %s (--force to replace it)", out)
		}

		key, err := manifest.LoadPrivateKey(keyFile)
		if err != nil {
			return err
		}
		build, err := manifest.LoadBuild(buildFile)
		if err != nil {
			return err
		}
		size, digest, err := hashFile(image)
		if err != nil {
			return err
		}
		if size == 0 {
			return fmt.Errorf("%s is empty", image)
		}
		m, err := build.Manifest(size, digest, time.Now())
		if err != nil {
			return fmt.Errorf("%s: %w", buildFile, err)
		}
		signed, err := manifest.Sign(m, key)
		if err != nil {
			return err
		}
		flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if force {
			flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		}
		if err := writeFile(out, signed, flags); err != nil {
			return err
		}
		kid := manifest.KeyIDOf(&key.PublicKey)
		if e.g.json {
			return e.printJSON(map[string]any{"manifest_file": out, "key_id": kid, "bytes": len(signed), "manifest": m})
		}
		fmt.Fprintf(e.out, "signed %s -> %s (%d bytes)\n", image, out, len(signed))
		printManifest(e.out, m, kid)
		return nil
	},
}

// verifyResult is verify's --json output.
type verifyResult struct {
	OK    bool         `json:"ok"`
	Error *verifyError `json:"error,omitempty"`
	// KeyID is the key the manifest names (when it parses).
	KeyID    *manifest.KeyID    `json:"key_id,omitempty"`
	Manifest *manifest.Manifest `json:"manifest,omitempty"`
	// ImageChecked says whether --image was compared.
	ImageChecked bool `json:"image_checked"`
}

type verifyError struct {
	// Code is malformed, unknown_key, bad_signature, size_mismatch or
	// digest_mismatch.
	Code    string `json:"code"`
	Message string `json:"message"`
	// ExpectedKeyID is the --pub key's ID, with unknown_key.
	ExpectedKeyID *manifest.KeyID `json:"expected_key_id,omitempty"`
}

var verifyCmd = command{
	flags: func(fs *flag.FlagSet) {
		fs.String("pub", "", "public key (NAME.pub from otactl keygen)")
		fs.String("image", "", "image file to compare with the manifest's size and digest")
	},
	run: func(_ context.Context, e *env, args []string) error {
		if len(args) != 1 {
			return usagef("want exactly one MANIFEST, got %d arguments", len(args))
		}
		pubFile, image := flagStr(e.fs, "pub"), flagStr(e.fs, "image")
		if pubFile == "" {
			return usagef("--pub PUB is required")
		}
		pub, err := manifest.LoadPublicKey(pubFile)
		if err != nil {
			return err
		}
		// One byte more than a manifest may have, so that Parse reports an
		// oversized file as malformed.
		raw, err := readAtMost(args[0], wire.MaxManifestSize+1)
		if err != nil {
			return err
		}
		res, err := verifyManifest(raw, pub, image)
		if e.g.json {
			if perr := e.printJSON(res); perr != nil {
				return perr
			}
		} else if err == nil {
			signedBy := "signed by key " + res.KeyID.String()
			if res.ImageChecked {
				fmt.Fprintf(e.out, "ok: %s, and %s matches it\n", signedBy, image)
			} else {
				fmt.Fprintf(e.out, "ok: %s (image not checked: no --image)\n", signedBy)
			}
			printManifest(e.out, res.Manifest, *res.KeyID)
		}
		return err
	},
}

// verifyManifest checks raw against pub and, when image is not empty, the
// image file; the error says exactly what is wrong.
func verifyManifest(raw []byte, pub *ecdsa.PublicKey, image string) (*verifyResult, error) {
	res := &verifyResult{}
	fail := func(code string, err error) (*verifyResult, error) {
		res.Error = &verifyError{Code: code, Message: err.Error()}
		return res, err
	}
	s, err := manifest.Parse(raw)
	if err != nil {
		return fail("malformed", err)
	}
	res.KeyID = &s.KeyID
	keys, err := manifest.NewKeySet(pub)
	if err != nil {
		return nil, err
	}
	want := manifest.KeyIDOf(pub)
	if err := s.Verify(keys); err != nil {
		if errors.Is(err, manifest.ErrUnknownKey) {
			r, err := fail("unknown_key", fmt.Errorf("signed by another key: the manifest names key %s, --pub is key %s", s.KeyID, want))
			r.Error.ExpectedKeyID = &want
			return r, err
		}
		return fail("bad_signature", fmt.Errorf("bad signature: the manifest is not, as it is now, signed by key %s (changed after signing, or a forged key ID)", s.KeyID))
	}
	res.Manifest = &s.Manifest
	if image != "" {
		size, digest, err := hashFile(image)
		if err != nil {
			return nil, err
		}
		res.ImageChecked = true
		if err := s.Manifest.CheckImage(size, digest); err != nil {
			code := "digest_mismatch"
			if errors.Is(err, manifest.ErrSizeMismatch) {
				code = "size_mismatch"
			}
			return fail(code, fmt.Errorf("%s: %w", image, err))
		}
	}
	res.OK = true
	return res, nil
}

// printManifest writes the fields of m an operator checks before a release.
func printManifest(w io.Writer, m *manifest.Manifest, kid manifest.KeyID) {
	row := func(k, format string, args ...any) { fmt.Fprintf(w, "  %-15s %s\n", k, fmt.Sprintf(format, args...)) }
	row("version", "%s (%s)", m.Version, m.Kind)
	if m.BuildID != "" {
		row("build", "%s", m.BuildID)
	}
	row("hardware", "%s", strings.Join(m.Hardware, ", "))
	if m.MinBootloader != "" {
		row("min bootloader", "%s", m.MinBootloader)
	}
	row("secure version", "%d", m.SecureVersion)
	row("size", "%d bytes", m.ImageSize)
	row("digest", "sha256:%s", m.ImageDigest)
	row("sequence", "%d", m.Sequence)
	row("key ID", "%s", kid)
	for i, c := range m.Components {
		k := ""
		if i == 0 {
			k = "components"
		}
		row(k, "%s %s sha256:%s", c.Name, c.Version, c.Digest)
	}
}

// flagGiven reports whether the flag name was set on fs's command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

func hashFile(path string) (uint64, manifest.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, manifest.Digest{}, err
	}
	defer f.Close()
	size, d, err := manifest.HashImage(f)
	if err != nil {
		return 0, manifest.Digest{}, fmt.Errorf("%s: %w", path, err)
	}
	return size, d, nil
}

// readAtMost reads the first n bytes of a file.
func readAtMost(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, int64(n)))
}

func writeFile(path string, data []byte, flags int) error {
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("refusing to overwrite %s (--force to replace it)", path)
		}
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
