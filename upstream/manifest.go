package upstream

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/oci"
)

// Manifest is a manifest as the upstream sent it.
type Manifest struct {
	Digest digest.Digest
	// MediaType is the upstream's Content-Type, exactly as sent.
	MediaType string
	Size      int64
	// Body holds the verified bytes; nil after HEAD.
	Body []byte
}

// HeadManifest resolves ref (a tag or digest) without downloading the
// manifest; a HEAD does not count as a pull on Docker Hub. When the upstream
// leaves out Docker-Content-Digest, Content-Length or Content-Type, it falls
// back to GET (and then Body is set). accept defaults to
// oci.ManifestMediaTypes.
func (c *Client) HeadManifest(ctx context.Context, repo, ref string, accept []string) (Manifest, error) {
	refDigest, err := checkReference(ref)
	if err != nil {
		return Manifest{}, err
	}
	resp, err := c.do(ctx, manifestCall(http.MethodHead, repo, ref, accept), http.StatusOK)
	if err != nil {
		return Manifest{}, err
	}
	resp.Body.Close()

	m := Manifest{MediaType: resp.Header.Get("Content-Type"), Size: resp.ContentLength}
	if m.MediaType != "" && !oci.IsManifestMediaType(m.MediaType) {
		return Manifest{}, c.notAManifest(repo, ref, m.MediaType)
	}
	announced, announcedErr := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	switch {
	case refDigest != "" && announcedErr == nil && announced.Algorithm() == refDigest.Algorithm() && announced != refDigest:
		return Manifest{}, c.errorf("%w: HEAD %s@%s: upstream announced %s", oci.ErrDigestMismatch, repo, ref, announced)
	case refDigest != "":
		m.Digest = refDigest
	case announcedErr == nil:
		m.Digest = announced
	}
	if m.Digest == "" || m.Size < 0 || m.MediaType == "" {
		c.log.Debug("incomplete manifest HEAD answer, falling back to GET", "repository", repo, "reference", ref)
		return c.GetManifest(ctx, repo, ref, accept)
	}
	return m, nil
}

// GetManifest downloads a manifest (at most oci.MaxManifestSize) and
// verifies its bytes: against ref if ref is a digest, else against the
// upstream's Docker-Content-Digest if sent; otherwise Digest is their
// sha256. A body of a media type that is not a manifest's fails with
// ErrInvalidResponse; one that does not match its digest, with
// oci.ErrDigestMismatch. accept defaults to oci.ManifestMediaTypes.
func (c *Client) GetManifest(ctx context.Context, repo, ref string, accept []string) (Manifest, error) {
	refDigest, err := checkReference(ref)
	if err != nil {
		return Manifest{}, err
	}
	resp, err := c.do(ctx, manifestCall(http.MethodGet, repo, ref, accept), http.StatusOK)
	if err != nil {
		return Manifest{}, err
	}
	defer resp.Body.Close()

	tooLarge := c.errorf("%w: %s:%s is larger than %d bytes", ErrManifestTooLarge, repo, ref, oci.MaxManifestSize)
	if resp.ContentLength > oci.MaxManifestSize {
		return Manifest{}, tooLarge
	}
	body, err := readLimited(resp.Body, oci.MaxManifestSize, tooLarge)
	if err != nil {
		if err == tooLarge {
			return Manifest{}, err
		}
		return Manifest{}, c.errorf("reading manifest %s:%s: %w", repo, ref, err)
	}
	mediaType := resp.Header.Get("Content-Type")
	if !oci.IsManifestMediaType(cmp.Or(mediaType, oci.DeclaredMediaType(body))) {
		return Manifest{}, c.notAManifest(repo, ref, mediaType)
	}

	want := refDigest
	if want == "" {
		if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
			if want, err = digest.Parse(h); err != nil {
				return Manifest{}, c.errorf("manifest %s:%s: upstream sent an invalid Docker-Content-Digest %q", repo, ref, h)
			}
		}
	}
	if want == "" {
		want = digest.FromBytes(body)
	} else if !want.Algorithm().Available() {
		return Manifest{}, c.errorf("manifest %s:%s: unsupported digest algorithm %q", repo, ref, want.Algorithm())
	} else if got := want.Algorithm().FromBytes(body); got != want {
		c.log.Warn("upstream sent a manifest that does not match its digest",
			"repository", repo, "reference", ref, "want", want, "got", got)
		return Manifest{}, c.errorf("%w: manifest %s:%s: want %s, body hashes to %s", oci.ErrDigestMismatch, repo, ref, want, got)
	}
	return Manifest{Digest: want, MediaType: mediaType, Size: int64(len(body)), Body: body}, nil
}

func (c *Client) notAManifest(repo, ref, mediaType string) error {
	return c.errorf("%w: %s:%s answered with Content-Type %q, which is not a manifest type", ErrInvalidResponse, repo, ref, mediaType)
}

func manifestCall(method, repo, ref string, accept []string) call {
	if len(accept) == 0 {
		accept = oci.ManifestMediaTypes()
	}
	return call{method: method, repo: repo, path: "manifests/" + ref,
		header: http.Header{"Accept": {strings.Join(accept, ", ")}}}
}

// checkReference validates a tag or digest before anything is sent (an
// invalid argument says nothing about the upstream's health) and returns
// ref's digest when it is one.
func checkReference(ref string) (digest.Digest, error) {
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return "", fmt.Errorf("invalid manifest digest %q: %w", ref, err)
		}
		return d, nil
	}
	if ref == "" || reference.TagRegexp.FindString(ref) != ref {
		return "", fmt.Errorf("invalid tag %q", ref)
	}
	return "", nil
}
