package upstream

import (
	"context"
	"fmt"
	"mime"
	"net/http"
	"net/url"

	"github.com/opencontainers/go-digest"
)

// MaxListSize bounds a tag list or referrers response. Tag lists of busy
// repositories are far larger than any manifest.
const MaxListSize = 16 << 20

const ociIndexMediaType = "application/vnd.oci.image.index.v1+json"

// Tags fetches one page of repo's tag list. Only query's "n" and "last" are
// passed on. link is the upstream's raw Link header ("" on the last page);
// its URL names the upstream's path, which the proxy rewrites for clients.
func (c *Client) Tags(ctx context.Context, repo string, query url.Values) (body []byte, link string, err error) {
	if err := checkRepo(repo); err != nil {
		return nil, "", err
	}
	finish, err := c.begin(ctx)
	if err != nil {
		return nil, "", err
	}
	defer finish(&err)

	resp, err := c.request(ctx, http.MethodGet, repo, "tags/list", pick(query, "n", "last"), nil)
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", newStatusError(resp)
	}
	defer resp.Body.Close()
	body, err = readLimited(resp.Body, MaxListSize,
		fmt.Errorf("tag list of %s is larger than %d bytes", repo, MaxListSize))
	if err != nil {
		return nil, "", fmt.Errorf("reading tag list of %s: %w", repo, err)
	}
	return body, resp.Header.Get("Link"), nil
}

// Referrers fetches the OCI 1.1 referrers index of a manifest. Only query's
// "artifactType" is passed on. An upstream without the referrers API
// answers ErrNotFound: 404 (also 400, 405 and 406, which some registries
// send for unknown routes) or a 200 that is not an OCI index.
func (c *Client) Referrers(ctx context.Context, repo string, dgst digest.Digest, query url.Values) (body []byte, contentType string, err error) {
	if err := checkBlobArgs(repo, dgst); err != nil {
		return nil, "", err
	}
	finish, err := c.begin(ctx)
	if err != nil {
		return nil, "", err
	}
	defer finish(&err)

	resp, err := c.request(ctx, http.MethodGet, repo, "referrers/"+dgst.String(), pick(query, "artifactType"),
		http.Header{"Accept": {ociIndexMediaType}})
	if err != nil {
		return nil, "", err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusNotAcceptable:
		return nil, "", fmt.Errorf("%w: no referrers API: %w", ErrNotFound, newStatusError(resp))
	default:
		return nil, "", newStatusError(resp)
	}
	defer resp.Body.Close()
	contentType = resp.Header.Get("Content-Type")
	if mt, _, _ := mime.ParseMediaType(contentType); mt != ociIndexMediaType {
		return nil, "", fmt.Errorf("%w: no referrers API: %s answered with Content-Type %q",
			ErrNotFound, redactURL(resp.Request.URL), contentType)
	}
	body, err = readLimited(resp.Body, MaxListSize,
		fmt.Errorf("referrers of %s@%s are larger than %d bytes", repo, dgst, MaxListSize))
	if err != nil {
		return nil, "", fmt.Errorf("reading referrers of %s@%s: %w", repo, dgst, err)
	}
	return body, contentType, nil
}

// pick copies the named parameters of q.
func pick(q url.Values, keys ...string) url.Values {
	out := url.Values{}
	for _, k := range keys {
		if v, ok := q[k]; ok {
			out[k] = v
		}
	}
	return out
}
