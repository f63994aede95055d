package cache

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// storedBlob is a committed blob as a walk of storage finds it.
type storedBlob struct {
	key     blobKey
	size    int64
	modTime time.Time
}

// walkStoredBlobs calls fn for every committed blob in storage as the walk
// finds it, holding nothing of what it found: a walk of a million blobs
// costs the memory of one directory listing (or of objectWalkers listing
// pages), not of a million paths. A blob committed or removed during the
// walk may be reported or not.
func (s *Store) walkStoredBlobs(ctx context.Context, fn func(storedBlob) error) error {
	if s.localRoot != "" {
		return s.walkLocalBlobs(ctx, fn)
	}
	return s.walkObjectBlobs(ctx, fn)
}

// objectWalkers is how many blobs/<algorithm>/<xx>/ prefixes of object
// storage are listed at once. Each listing page costs the server time to
// build, a round trip, and this replica time to decode: with one lister,
// each side waits while the other works.
const objectWalkers = 2

// walkObjectBlobs lists the blob prefixes of object storage side by side
// and calls fn for one blob at a time.
func (s *Store) walkObjectBlobs(ctx context.Context, fn func(storedBlob) error) error {
	algorithms, err := s.driver.List(ctx, "/blobs")
	if isPathNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var prefixes []string
	for _, alg := range algorithms {
		p, err := s.driver.List(ctx, alg)
		if isPathNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		prefixes = append(prefixes, p...)
	}
	var mu sync.Mutex
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(objectWalkers)
	for _, prefix := range prefixes {
		g.Go(func() error {
			err := s.driver.Walk(ctx, prefix, func(fi storagedriver.FileInfo) error {
				if fi.IsDir() {
					return nil
				}
				k, ok := keyFromBlobPath(fi.Path())
				if !ok {
					return nil
				}
				mu.Lock()
				defer mu.Unlock()
				if err := ctx.Err(); err != nil {
					return err
				}
				return fn(storedBlob{k, fi.Size(), fi.ModTime()})
			})
			if isPathNotFound(err) {
				return nil // removed since blobs/ was listed
			}
			return err
		})
	}
	return g.Wait()
}

// localWalkBatch is how many names of a directory are read at once.
const localWalkBatch = 1024

// walkLocalBlobs walks the filesystem driver's blobs/<algorithm>/<xx>/
// directories itself: one lstat of <encoded>/data per blob, where the
// driver's generic walk lists and stats every directory and file on the
// way (six system calls a blob) and keeps each listing whole.
func (s *Store) walkLocalBlobs(ctx context.Context, fn func(storedBlob) error) error {
	blobs := s.localPath("/blobs")
	algorithms, err := os.ReadDir(blobs)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, alg := range algorithms {
		if !alg.IsDir() {
			continue
		}
		prefixes, err := os.ReadDir(filepath.Join(blobs, alg.Name()))
		if err != nil {
			return err
		}
		for _, prefix := range prefixes {
			if !prefix.IsDir() {
				continue
			}
			dir := filepath.Join(blobs, alg.Name(), prefix.Name())
			if err := walkLocalPrefix(ctx, dir, alg.Name(), prefix.Name(), fn); err != nil {
				return err
			}
		}
	}
	return nil
}

func walkLocalPrefix(ctx context.Context, dir, alg, prefix string, fn func(storedBlob) error) error {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed since its parent was listed
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		names, err := f.Readdirnames(localWalkBatch)
		for _, encoded := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			k, ok := keyFromBlobPathParts(alg, prefix, encoded)
			if !ok {
				continue
			}
			fi, err := os.Lstat(filepath.Join(dir, encoded, "data"))
			if errors.Is(err, os.ErrNotExist) {
				continue // being removed, or a commit still moving in
			}
			if err != nil {
				return err
			}
			if !fi.Mode().IsRegular() {
				continue
			}
			if err := fn(storedBlob{k, fi.Size(), fi.ModTime()}); err != nil {
				return err
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// keyFromBlobPath parses /blobs/<algorithm>/<xx>/<encoded>/data.
func keyFromBlobPath(p string) (blobKey, bool) {
	rest, ok := strings.CutPrefix(p, "/blobs/")
	if !ok {
		return blobKey{}, false
	}
	alg, rest, _ := strings.Cut(rest, "/")
	prefix, rest, _ := strings.Cut(rest, "/")
	encoded, rest, _ := strings.Cut(rest, "/")
	if rest != "data" {
		return blobKey{}, false
	}
	return keyFromBlobPathParts(alg, prefix, encoded)
}

// keyFromBlobPathParts is the key of the blob stored at
// /blobs/<alg>/<prefix>/<encoded>/data, if that is where blobPath puts a
// valid digest. A sha256 digest is decoded without building its string.
func keyFromBlobPathParts(alg, prefix, encoded string) (blobKey, bool) {
	if len(encoded) < 2 || prefix != encoded[:2] {
		return blobKey{}, false
	}
	var k blobKey
	if alg == string(digest.SHA256) && decodeLowerHex(k.sha256[:], encoded) {
		return k, true
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), encoded)
	if d.Validate() != nil {
		return blobKey{}, false
	}
	return keyOf(d), true
}

// decodeLowerHex decodes s, exactly 2*len(dst) lowercase hex digits (the
// only form digest.Validate accepts), into dst.
func decodeLowerHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := lowerHexValue(s[2*i])
		lo, ok2 := lowerHexValue(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func lowerHexValue(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
