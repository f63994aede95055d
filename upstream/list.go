package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// MaxListSize bounds a tag list or referrers response. Tag lists of busy
// repositories are far larger than any manifest.
const MaxListSize = 16 << 20

// Tags fetches one page of repo's tag list. Only query's "n" and "last" are
// passed on. link is the upstream's raw Link header ("" on the last page);
// its URL names the upstream's path, which the proxy rewrites for clients.
// A body that is not a JSON tag list fails with ErrInvalidResponse.
func (c *Client) Tags(ctx context.Context, repo string, query url.Values) (body []byte, link string, err error) {
	resp, err := c.do(ctx, call{method: http.MethodGet, repo: repo, path: "tags/list", query: pick(query, "n", "last")}, http.StatusOK)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err = readLimited(resp.Body, MaxListSize,
		fmt.Errorf("tag list of %s is larger than %d bytes", repo, MaxListSize))
	if err != nil {
		return nil, "", c.errorf("reading tag list of %s: %w", repo, err)
	}
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, "", c.errorf("%w: the tag list of %s is not a JSON tag list: %v", ErrInvalidResponse, repo, err)
	}
	return body, resp.Header.Get("Link"), nil
}

// Referrers fetches the OCI 1.1 referrers index of a manifest. Only query's
// "artifactType" is passed on. An upstream without the referrers API
// answers ErrNotFound: 404 (also 400, 405 and 406, which some registries
// send for unknown routes) or a 200 that is not an OCI index.
func (c *Client) Referrers(ctx context.Context, repo string, dgst digest.Digest, query url.Values) (body []byte, contentType string, err error) {
	if err := checkDigest(dgst); err != nil {
		return nil, "", err
	}
	resp, err := c.do(ctx, call{method: http.MethodGet, repo: repo, path: "referrers/" + dgst.String(),
		query: pick(query, "artifactType"), header: http.Header{"Accept": {string(types.OCIImageIndex)}}},
		http.StatusOK, http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusNotAcceptable)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", c.errorf("%w: no referrers API: %s answered %d", ErrNotFound, redactURL(resp.Request.URL), resp.StatusCode)
	}
	contentType = resp.Header.Get("Content-Type")
	if mt, _, _ := mime.ParseMediaType(contentType); mt != string(types.OCIImageIndex) {
		return nil, "", c.errorf("%w: no referrers API: %s answered with Content-Type %q", ErrNotFound, redactURL(resp.Request.URL), contentType)
	}
	body, err = readLimited(resp.Body, MaxListSize,
		fmt.Errorf("referrers of %s@%s are larger than %d bytes", repo, dgst, MaxListSize))
	if err != nil {
		return nil, "", c.errorf("reading referrers of %s@%s: %w", repo, dgst, err)
	}
	return body, contentType, nil
}
