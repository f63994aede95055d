package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
)

// ImageList is the file `pullbroker sync -f` reads.
type ImageList struct {
	// Platforms applies to every image that names none; empty means all.
	Platforms []Platform `json:"platforms,omitempty"`
	Images    []Entry    `json:"images"`
}

// Entry is one image to seed: a plain string in YAML, or an object with
// its own platforms.
type Entry struct {
	Image     string     `json:"image"`
	Platforms []Platform `json:"platforms,omitempty"`
}

// UnmarshalJSON accepts "docker.io/library/nginx:1.27" as well as
// {image: …, platforms: […]}.
func (e *Entry) UnmarshalJSON(b []byte) error {
	var s string
	if err := yaml.Unmarshal(b, &s); err == nil && s != "" {
		e.Image = s
		return nil
	}
	type plain Entry
	return yaml.UnmarshalStrict(b, (*plain)(e))
}

// ReadImageList reads and checks an image list against the configured
// upstreams before anything is fetched.
func ReadImageList(cfg *config.Config, file string) (ImageList, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return ImageList{}, err
	}
	var l ImageList
	if err := yaml.UnmarshalStrict(b, &l); err != nil {
		return ImageList{}, fmt.Errorf("%s: %w", file, err)
	}
	for i, e := range l.Images {
		if _, err := tags.ParseImage(cfg, e.Image); err != nil {
			return ImageList{}, fmt.Errorf("%s: images[%d]: %w", file, i, err)
		}
		for _, p := range append(e.Platforms, l.Platforms...) {
			if _, err := v1.ParsePlatform(p); err != nil {
				return ImageList{}, fmt.Errorf("%s: images[%d]: platform %q: %w", file, i, p, err)
			}
		}
	}
	return l, nil
}

// SyncResult is the outcome of one image.
type SyncResult struct {
	Image  string
	Digest string
	Blobs  int
	Bytes  int64
	// TotalBlobs and TotalBytes count the layers found so far, the ones
	// being read included: the denominator of the progress line.
	TotalBlobs int
	TotalBytes int64
	Err        error
}

// Sync pulls every image of the list through the proxy into the cache and
// pins its tag to the digest it resolved to. Blobs already cached are not
// fetched again, so an interrupted sync resumes where it stopped and a
// repeated one changes nothing.
func Sync(ctx context.Context, cfg *config.Config, registryAPI http.Handler, resolver *tags.Resolver, list ImageList, progress io.Writer) ([]SyncResult, error) {
	lp, err := startLoopback(registryAPI)
	if err != nil {
		return nil, err
	}
	defer lp.Close()
	live := isTerminal(progress)
	var results []SyncResult
	for i, e := range list.Images {
		platforms := e.Platforms
		if len(platforms) == 0 {
			platforms = list.Platforms
		}
		start := time.Now()
		var onBlob func(SyncResult)
		if live {
			var last time.Time
			onBlob = func(r SyncResult) {
				// Redrawn at most ten times a second, and at each blob's end.
				if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || r.Blobs == r.TotalBlobs {
					last = now
					rate := float64(r.Bytes) / max(now.Sub(start).Seconds(), 0.001)
					fmt.Fprintf(progress, "\r\033[K[%d/%d] %s: %d/%s, %s / %s, %s/s", i+1, len(list.Images), e.Image,
						r.Blobs, plural(r.TotalBlobs, "blob"), humanBytes(r.Bytes), humanBytes(r.TotalBytes), humanBytes(int64(rate)))
				}
			}
		}
		res := syncImage(ctx, cfg, resolver, lp, e.Image, platforms, onBlob)
		if live {
			fmt.Fprint(progress, "\r\033[K")
		}
		if res.Err != nil {
			fmt.Fprintf(progress, "FAIL %s: %v\n", e.Image, res.Err)
		} else {
			fmt.Fprintf(progress, "ok   %s@%s (%s, %s, %s)\n", res.Image, res.Digest, plural(res.Blobs, "blob"), humanBytes(res.Bytes), time.Since(start).Round(time.Millisecond))
		}
		results = append(results, res)
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
	}
	return results, nil
}

// syncImage pulls one image through the proxy; onBlob, when set, sees the
// running totals after every blob.
func syncImage(ctx context.Context, cfg *config.Config, resolver *tags.Resolver, lp *loopbackProxy, ref string, platforms []Platform, onBlob func(SyncResult)) SyncResult {
	res := SyncResult{Image: ref}
	img, err := tags.ParseImage(cfg, ref)
	if err != nil {
		res.Err = err
		return res
	}
	res.Image = img.String()
	desc, err := lp.get(ctx, img)
	if err != nil {
		res.Err = err
		return res
	}
	res.Digest = desc.Digest.String()
	report := func() {
		if onBlob != nil {
			onBlob(res)
		}
	}
	if err := walkDescriptor(ctx, lp, img, desc, platforms, blobEvents{
		found: func(size int64) { res.TotalBlobs++; res.TotalBytes += size },
		read:  func(n int64) { res.Bytes += n; report() },
		done:  func() { res.Blobs++; report() },
	}); err != nil {
		res.Err = err
		return res
	}
	if img.Tag != "" {
		tagged := img
		tagged.Digest = ""
		if _, err := resolver.SetPin(ctx, tagged, digest.Digest(desc.Digest.String())); err != nil {
			res.Err = fmt.Errorf("pinning: %w", err)
		}
	}
	return res
}

// blobEvents follow walkDescriptor: an image's layers found (with their
// sizes), bytes read, a layer read whole.
type blobEvents struct {
	found func(size int64)
	read  func(n int64)
	done  func()
}

func (e blobEvents) Write(p []byte) (int, error) {
	e.read(int64(len(p)))
	return len(p), nil
}

// walkDescriptor reads every blob of an image, or of the chosen platforms
// of an index, through the proxy; reading is what fills the cache.
func walkDescriptor(ctx context.Context, lp *loopbackProxy, img tags.Image, desc *remote.Descriptor, platforms []Platform, events blobEvents) error {
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return err
		}
		matched := 0
		var available []string
		for _, child := range im.Manifests {
			if child.Platform != nil {
				available = append(available, child.Platform.String())
			}
			if !platformMatches(child.Platform, platforms) {
				continue
			}
			matched++
			childImg := img
			childImg.Tag, childImg.Digest = "", digest.Digest(child.Digest.String())
			cd, err := lp.get(ctx, childImg)
			if err != nil {
				return fmt.Errorf("%s: %w", child.Digest, err)
			}
			if err := walkDescriptor(ctx, lp, childImg, cd, nil, events); err != nil {
				return err
			}
		}
		if matched == 0 {
			return fmt.Errorf("%w %s; the index has %s", errNoPlatform, platformList(platforms), orNothing(available))
		}
		return nil
	}
	image, err := desc.Image()
	if err != nil {
		return err
	}
	if _, err := image.RawConfigFile(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	layers, err := image.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		size, err := l.Size()
		if err != nil {
			return err
		}
		events.found(size)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(events, rc)
		rc.Close()
		if err != nil {
			return err
		}
		events.done()
	}
	return nil
}

// isTerminal reports whether w is a terminal, where sync redraws one
// progress line instead of printing a line per image only.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// plural is "1 blob", "2 blobs".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func platformList(ps []Platform) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return "(" + strings.Join(s, ", ") + ")"
}

func orNothing(s []string) string {
	if len(s) == 0 {
		return "no platforms listed"
	}
	return strings.Join(s, ", ")
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
