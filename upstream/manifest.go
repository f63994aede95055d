package upstream

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"
)

// MaxManifestSize is the largest manifest GetManifest accepts (the limit
// the distribution reference implementation applies as well).
const MaxManifestSize = 4 << 20

// Media types the proxy asks for when the caller names none.
var DefaultManifestAccept = []string{
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}

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
// back to GET (and then Body is set).
func (c *Client) HeadManifest(ctx context.Context, repo, ref string, accept []string) (m Manifest, err error) {
	refDigest, err := checkManifestArgs(repo, ref)
	if err != nil {
		return Manifest{}, err
	}
	finish, err := c.begin(ctx)
	if err != nil {
		return Manifest{}, err
	}
	defer finish(&err)

	resp, err := c.request(ctx, http.MethodHead, repo, "manifests/"+ref, nil, acceptHeader(accept))
	if err != nil {
		return Manifest{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, newStatusError(resp)
	}
	resp.Body.Close()

	m = Manifest{MediaType: resp.Header.Get("Content-Type"), Size: resp.ContentLength}
	announced, announcedErr := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	switch {
	case refDigest != "" && announcedErr == nil && announced.Algorithm() == refDigest.Algorithm() && announced != refDigest:
		return Manifest{}, fmt.Errorf("%w: HEAD %s@%s: upstream announced %s", ErrDigestMismatch, repo, ref, announced)
	case refDigest != "":
		m.Digest = refDigest
	case announcedErr == nil:
		m.Digest = announced
	}
	if m.Digest == "" || m.Size < 0 || m.MediaType == "" {
		c.log.Debug("incomplete manifest HEAD answer, falling back to GET", "repository", repo, "reference", ref)
		return c.getManifest(ctx, repo, ref, refDigest, accept)
	}
	return m, nil
}

// GetManifest downloads a manifest (at most MaxManifestSize) and verifies
// its bytes: against ref if ref is a digest, else against the upstream's
// Docker-Content-Digest if sent; otherwise Digest is their sha256.
func (c *Client) GetManifest(ctx context.Context, repo, ref string, accept []string) (m Manifest, err error) {
	refDigest, err := checkManifestArgs(repo, ref)
	if err != nil {
		return Manifest{}, err
	}
	finish, err := c.begin(ctx)
	if err != nil {
		return Manifest{}, err
	}
	defer finish(&err)

	return c.getManifest(ctx, repo, ref, refDigest, accept)
}

func (c *Client) getManifest(ctx context.Context, repo, ref string, refDigest digest.Digest, accept []string) (Manifest, error) {
	resp, err := c.request(ctx, http.MethodGet, repo, "manifests/"+ref, nil, acceptHeader(accept))
	if err != nil {
		return Manifest{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, newStatusError(resp)
	}
	defer resp.Body.Close()

	tooLarge := fmt.Errorf("%w: %s:%s is larger than %d bytes", ErrManifestTooLarge, repo, ref, MaxManifestSize)
	if resp.ContentLength > MaxManifestSize {
		return Manifest{}, tooLarge
	}
	body, err := readLimited(resp.Body, MaxManifestSize, tooLarge)
	if err != nil {
		return Manifest{}, fmt.Errorf("reading manifest %s:%s: %w", repo, ref, err)
	}

	want := refDigest
	if want == "" {
		if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
			if want, err = digest.Parse(h); err != nil {
				return Manifest{}, fmt.Errorf("manifest %s:%s: upstream sent an invalid Docker-Content-Digest %q", repo, ref, h)
			}
		}
	}
	if want == "" {
		want = digest.FromBytes(body)
	} else if !want.Algorithm().Available() {
		return Manifest{}, fmt.Errorf("manifest %s:%s: unsupported digest algorithm %q", repo, ref, want.Algorithm())
	} else if got := want.Algorithm().FromBytes(body); got != want {
		c.log.Warn("upstream sent a manifest that does not match its digest",
			"repository", repo, "reference", ref, "want", want, "got", got)
		return Manifest{}, fmt.Errorf("%w: %s:%s: want %s, body hashes to %s", ErrDigestMismatch, repo, ref, want, got)
	}
	return Manifest{
		Digest:    want,
		MediaType: resp.Header.Get("Content-Type"),
		Size:      int64(len(body)),
		Body:      body,
	}, nil
}

// checkManifestArgs validates repo and ref before anything is sent (an
// invalid argument says nothing about the upstream's health) and returns
// ref's digest when it is one.
func checkManifestArgs(repo, ref string) (digest.Digest, error) {
	if err := checkRepo(repo); err != nil {
		return "", err
	}
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return "", fmt.Errorf("invalid manifest digest %q: %w", ref, err)
		}
		return d, nil
	}
	if !tagPattern.MatchString(ref) {
		return "", fmt.Errorf("invalid tag %q", ref)
	}
	return "", nil
}

func acceptHeader(accept []string) http.Header {
	if len(accept) == 0 {
		accept = DefaultManifestAccept
	}
	return http.Header{"Accept": {strings.Join(accept, ", ")}}
}
