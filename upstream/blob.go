package upstream

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/opencontainers/go-digest"
)

// GetBlob starts downloading a blob. Redirects to blob storage on another
// host are followed without the registry's Authorization header. The body
// is not verified (the cache does that while storing it); cancelling ctx
// ends it. size is -1 when the upstream does not announce it. The circuit
// breaker judges the call by its response headers: a body cut off later is
// the reader's error, not a breaker failure.
func (c *Client) GetBlob(ctx context.Context, repo string, dgst digest.Digest) (body io.ReadCloser, size int64, err error) {
	if err := checkBlobArgs(repo, dgst); err != nil {
		return nil, 0, err
	}
	finish, err := c.begin(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer finish(&err)

	resp, err := c.request(ctx, http.MethodGet, repo, "blobs/"+dgst.String(), nil, nil)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, 0, newStatusError(resp)
	}
	return resp.Body, resp.ContentLength, nil
}

// HeadBlob reports whether the upstream holds a blob in repo, and its size
// (-1 if not announced).
func (c *Client) HeadBlob(ctx context.Context, repo string, dgst digest.Digest) (size int64, err error) {
	if err := checkBlobArgs(repo, dgst); err != nil {
		return 0, err
	}
	finish, err := c.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer finish(&err)

	resp, err := c.request(ctx, http.MethodHead, repo, "blobs/"+dgst.String(), nil, nil)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, newStatusError(resp)
	}
	resp.Body.Close()
	return resp.ContentLength, nil
}

func checkBlobArgs(repo string, dgst digest.Digest) error {
	if err := checkRepo(repo); err != nil {
		return err
	}
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("invalid blob digest %q: %w", dgst, err)
	}
	return nil
}
