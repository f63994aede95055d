package tags

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
	"go.yaml.in/yaml/v3"

	"github.com/pullbroker/pullbroker/config"
)

// LockFile is the format `locked` rules read and `pullbroker pin export`
// writes: image references to digests, meant to live in Git.
//
//	pins:
//	  docker.io/library/nginx:1.27: sha256:…
type LockFile struct {
	Pins map[string]digest.Digest `json:"pins" yaml:"pins"`
}

const lockFileShape = `a lock file is a map "pins" of tag references to digests, for example
  pins:
    docker.io/library/nginx:1.27: sha256:<64 hex digits>`

// DecodeLockFile parses a lock file's bytes. Its error names the line and
// shows the expected shape.
func DecodeLockFile(b []byte) (LockFile, error) {
	var lf LockFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&lf); err != nil && !errors.Is(err, io.EOF) {
		// yaml's errors name the line ("line 3: cannot unmarshal …").
		return LockFile{}, fmt.Errorf("%v\n%s", err, lockFileShape)
	}
	return lf, nil
}

// ReadLockFile reads and validates a lock file, keyed by the normalized
// image reference ("docker.io/library/nginx:1.27").
func ReadLockFile(cfg *config.Config, file string) (map[string]digest.Digest, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	lf, err := DecodeLockFile(b)
	if err != nil {
		return nil, fmt.Errorf("lock file %s: %w", file, err)
	}
	out := make(map[string]digest.Digest, len(lf.Pins))
	for ref, d := range lf.Pins {
		img, err := ParseImage(cfg, ref)
		if err != nil {
			return nil, fmt.Errorf("lock file %s: %w", file, err)
		}
		if img.Digest != "" {
			return nil, fmt.Errorf("lock file %s: %q must be a tag reference without a digest", file, ref)
		}
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("lock file %s: %s: bad digest %q: %v", file, ref, d, err)
		}
		out[img.String()] = d
	}
	return out, nil
}
