package mirror

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
)

// Import loads every image of an OCI image layout (a directory or a tar)
// that carries a reference annotation into the cache, verifying each blob
// and manifest against its digest, and pins each tag. It needs no
// upstream, so it seeds an offline proxy.
func Import(ctx context.Context, cfg *config.Config, store *cache.Store, resolver *tags.Resolver, src string, progress io.Writer) (int, error) {
	dir := src
	if fi, err := os.Stat(src); err != nil {
		return 0, err
	} else if !fi.IsDir() {
		tmp, err := os.MkdirTemp("", "pullbroker-import-*")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(tmp)
		if err := extractTar(src, tmp); err != nil {
			return 0, err
		}
		dir = tmp
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		return 0, fmt.Errorf("%s is not an OCI image layout: %w", src, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return 0, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return 0, err
	}
	imported := 0
	for _, desc := range im.Manifests {
		ref := desc.Annotations[RefNameAnnotation]
		if ref == "" {
			continue
		}
		img, err := tags.ParseImage(cfg, ref)
		if err != nil {
			return imported, err
		}
		imp := importer{store: store, layout: p, registry: img.Registry, repo: img.Repository}
		if err := imp.manifest(ctx, desc); err != nil {
			return imported, fmt.Errorf("%s: %w", img, err)
		}
		if img.Tag != "" {
			tagged := img
			tagged.Digest = ""
			if _, err := resolver.SetPin(ctx, tagged, digest.Digest(desc.Digest.String())); err != nil {
				return imported, err
			}
		}
		imported++
		fmt.Fprintf(progress, "imported %s@%s\n", img, desc.Digest)
	}
	return imported, nil
}

type importer struct {
	store    *cache.Store
	layout   layout.Path
	registry string
	repo     string
}

// manifest imports the blobs a manifest references, then the manifest, so
// the cache never holds a manifest whose content it lacks.
func (imp importer) manifest(ctx context.Context, desc v1.Descriptor) error {
	body, err := imp.layout.Bytes(desc.Digest)
	if err != nil {
		return err
	}
	if desc.MediaType.IsIndex() {
		children, err := v1.ParseIndexManifest(strings.NewReader(string(body)))
		if err != nil {
			return err
		}
		for _, c := range children.Manifests {
			if err := imp.manifest(ctx, c); err != nil {
				return err
			}
		}
	} else {
		m, err := v1.ParseManifest(strings.NewReader(string(body)))
		if err != nil {
			return err
		}
		for _, b := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if err := imp.blob(ctx, b); err != nil {
				return err
			}
		}
	}
	return imp.store.PutManifest(ctx, imp.registry, imp.repo, cache.Manifest{
		Digest: digest.Digest(desc.Digest.String()), MediaType: string(desc.MediaType), Body: body,
	})
}

// blob goes through a cache fill: the same digest check and atomic commit
// as a blob from an upstream.
func (imp importer) blob(ctx context.Context, desc v1.Descriptor) error {
	dgst := digest.Digest(desc.Digest.String())
	f, cached, err := imp.store.Fill(dgst, desc.Size, func(context.Context) (io.ReadCloser, int64, error) {
		rc, err := imp.layout.Blob(desc.Digest)
		return rc, desc.Size, err
	})
	if err != nil {
		return err
	}
	if !cached {
		if err := f.Done(ctx); err != nil {
			return fmt.Errorf("blob %s: %w", dgst, err)
		}
	}
	return imp.store.LinkBlob(ctx, imp.registry, imp.repo, dgst, desc.Size)
}

func extractTar(src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", src, err)
		}
		target := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if !strings.HasPrefix(target, filepath.Clean(dir)+string(os.PathSeparator)) {
			return fmt.Errorf("%s: entry %q escapes the archive", src, hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			out.Close()
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: entry %q is not a file or directory", src, hdr.Name)
		}
	}
}
