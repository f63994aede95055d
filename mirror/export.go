package mirror

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
)

// RefNameAnnotation carries each exported image's reference, the way OCI
// image layouts name their images.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// Export writes the images, read through the proxy (pins and offline
// rules apply), to an OCI image layout at dest: a directory, or a tar
// file when dest ends in ".tar".
func Export(ctx context.Context, cfg *config.Config, registryAPI http.Handler, images []string, dest string, progress io.Writer) error {
	dir := dest
	asTar := strings.HasSuffix(dest, ".tar")
	if asTar {
		tmp, err := os.MkdirTemp(filepath.Dir(dest), ".pullbroker-export-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	lp, err := startLoopback(registryAPI)
	if err != nil {
		return err
	}
	defer lp.Close()

	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("creating image layout %s: %w", dir, err)
		}
	}
	for _, ref := range images {
		img, err := tags.ParseImage(cfg, ref)
		if err != nil {
			return err
		}
		desc, err := lp.get(ctx, img)
		if err != nil {
			return fmt.Errorf("%s: %w", img, err)
		}
		opt := layout.WithAnnotations(map[string]string{RefNameAnnotation: img.String()})
		if desc.MediaType.IsIndex() {
			idx, err := desc.ImageIndex()
			if err != nil {
				return err
			}
			err = p.AppendIndex(idx, opt)
		} else {
			image, ierr := desc.Image()
			if ierr != nil {
				return ierr
			}
			err = p.AppendImage(image, opt)
		}
		if err != nil {
			return fmt.Errorf("exporting %s: %w", img, err)
		}
		fmt.Fprintf(progress, "exported %s@%s\n", img, desc.Digest)
	}
	if asTar {
		return writeTar(dir, dest)
	}
	return nil
}

// writeTar archives dir into a file written under a temporary name, so
// an interrupted export never leaves a tar that looks whole.
func writeTar(dir, dest string) error {
	f, err := os.CreateTemp(filepath.Dir(dest), ".pullbroker-export-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	return os.Rename(f.Name(), dest)
}
