package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// call is one request of the registry API for one repository.
type call struct {
	method string
	repo   string
	// path follows /v2/<repo>/: "manifests/v1", "blobs/sha256:…", "tags/list".
	path   string
	query  url.Values
	header http.Header
	// followRedirects is set for blob requests only: registries send them
	// to blob storage. Any other redirect is refused (see redirect.go).
	followRedirects bool
}

// callKey carries a request's call through the transport stack: the
// repository scope its credentials belong to, and whether it may be
// redirected. Redirected requests share their first request's context.
type callKey struct{}

func callFrom(ctx context.Context) (call, bool) {
	cl, ok := ctx.Value(callKey{}).(call)
	return cl, ok
}

// do is the one request path of every Client method: validate, send through
// the transport stack, and turn anything but one of the ok statuses into an
// error. Errors name the upstream and carry no secret. On success the
// caller owns the response body.
func (c *Client) do(ctx context.Context, cl call, ok ...int) (*http.Response, error) {
	resp, err := c.send(ctx, cl, ok)
	if err != nil {
		return nil, c.errorf("%w", err)
	}
	return resp, nil
}

// errorf formats an error of a call, naming the upstream.
func (c *Client) errorf(format string, args ...any) error {
	return fmt.Errorf("upstream %s: %w", c.name, fmt.Errorf(format, args...))
}

func (c *Client) send(ctx context.Context, cl call, ok []int) (*http.Response, error) {
	if err := c.checkRepo(cl.repo); err != nil {
		return nil, err
	}
	u := c.baseURL + "/v2/" + cl.repo + "/" + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	req, err := http.NewRequestWithContext(context.WithValue(ctx, callKey{}, cl), cl.method, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, describeRequestError(cl.method, req.URL, err)
	}
	if err := transport.CheckError(resp, ok...); err != nil {
		resp.Body.Close()
		var te *transport.Error
		if errors.As(err, &te) {
			return nil, statusErrorFromTransport(te)
		}
		// Reading the error body failed: the upstream broke off.
		return nil, &unreachableError{err: err}
	}
	return resp, nil
}

// describeRequestError classifies an error of http.Client.Do and names the
// request it belongs to, with a redacted URL: url.Error's own text would
// repeat the URL with its query, or a blob-storage redirect's signed URL.
// A *StatusError (from the token exchange) already names its own URL.
func describeRequestError(method string, u *url.URL, err error) error {
	if urlErr, ok := err.(*url.Error); ok {
		err = urlErr.Err
	}
	err = classifyRequestError(err)
	var se *StatusError
	if errors.As(err, &se) {
		return err
	}
	return fmt.Errorf("%s %s: %w", method, redactURL(u), err)
}

// readLimited reads body up to limit bytes, failing with tooLarge beyond.
// A body that breaks off is the upstream's failure, hence unreachable,
// unless the caller cancelled.
func readLimited(body io.Reader, limit int64, tooLarge error) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		return nil, &unreachableError{err: err}
	}
	if int64(len(b)) > limit {
		return nil, tooLarge
	}
	return b, nil
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

// firstLine keeps the first line of an error text: ggcr may quote a token
// response body after it, and that never belongs in an error.
func firstLine(msg string) string {
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		return strings.TrimSpace(msg[:i])
	}
	return msg
}
