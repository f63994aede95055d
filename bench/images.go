package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fileLayer is a layer whose bytes are a file of random data. Registries
// do not look inside layers, so it need not be a gzipped tar.
type fileLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// DiffID is the digest too: there is nothing to decompress.
func (l *fileLayer) DiffID() (v1.Hash, error) { return l.digest, nil }

// randomFile writes size pseudo-random bytes (seeded, so reruns write the
// same content) and returns the layer over them.
func randomFile(path string, size int64, seed uint64) (*fileLayer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 0x62, 0x65, 0x6e, 0x63, 0x68})
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if _, err := io.CopyN(w, src, size); err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return &fileLayer{path: path, size: size, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}, nil
}

// benchImage is an image pushed to the upstream, with what a client needs
// to check a pull of it.
type benchImage struct {
	repo, tag string
	// digest is the manifest's; config is the config blob's digest.
	digest, config string
	manifestSize   int64
	configSize     int64
	layers         []*fileLayer
	// total is the bytes of manifest, config and layers: what one full
	// pull transfers.
	total int64
}

// pushImage makes an OCI image of the layers and pushes it to the
// registry at host under every tag.
func pushImage(ctx context.Context, host, repo string, tags []string, layers []*fileLayer) (*benchImage, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, fl := range layers {
		l, err := partial.CompressedToLayer(fl)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	bi := &benchImage{
		repo: repo, tag: tags[0], layers: layers, total: int64(len(manifest) + len(config)),
		digest: digestOf(manifest), config: digestOf(config), manifestSize: int64(len(manifest)), configSize: int64(len(config)),
	}
	for _, l := range layers {
		bi.total += l.size
	}
	for _, tag := range tags {
		ref, err := name.NewTag(fmt.Sprintf("%s/%s:%s", host, repo, tag), name.Insecure)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
			return nil, fmt.Errorf("pushing %s: %w", ref, err)
		}
	}
	return bi, nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// blobFile is where pullbroker's filesystem cache keeps a blob.
func blobFile(root, hex string) string {
	return filepath.Join(root, "blobs", "sha256", hex[:2], hex, "data")
}
