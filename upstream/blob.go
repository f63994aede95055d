package upstream

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/opencontainers/go-digest"
)

// GetBlob starts downloading a blob. Redirects to blob storage on another
// host are followed (a few hops, never to a private address unless the
// upstream allows it) without the registry's Authorization header. The
// body is not verified (the cache does that while storing it); cancelling
// ctx ends it. size is -1 when the upstream does not announce it.
func (c *Client) GetBlob(ctx context.Context, repo string, dgst digest.Digest) (body io.ReadCloser, size int64, err error) {
	if err := checkDigest(dgst); err != nil {
		return nil, 0, err
	}
	resp, err := c.do(ctx, call{method: http.MethodGet, repo: repo, path: "blobs/" + dgst.String(), followRedirects: true}, http.StatusOK)
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// HeadBlob reports whether the upstream holds a blob in repo, and its size
// (-1 if not announced). Redirects are followed as for GetBlob: registries
// on object storage (distribution's redirect option) send HEADs there too.
func (c *Client) HeadBlob(ctx context.Context, repo string, dgst digest.Digest) (size int64, err error) {
	if err := checkDigest(dgst); err != nil {
		return 0, err
	}
	resp, err := c.do(ctx, call{method: http.MethodHead, repo: repo, path: "blobs/" + dgst.String(), followRedirects: true}, http.StatusOK)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.ContentLength, nil
}

func checkDigest(dgst digest.Digest) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %w", dgst, err)
	}
	return nil
}
