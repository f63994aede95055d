package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	v2 "github.com/distribution/distribution/v3/registry/api/v2"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/upstream"
)

// apiError is an OCI error with the HTTP status it is answered with.
type apiError struct {
	status int
	err    errcode.Error
	// retryAfter, when set, is sent as Retry-After.
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.err.Error() }

func newAPIError(status int, code errcode.ErrorCode, format string, args ...any) *apiError {
	return &apiError{status: status, err: code.WithMessage(fmt.Sprintf(format, args...))}
}

// writeError answers with an OCI error body, {"errors":[{code,message,detail}]}.
// HEAD responses carry the status alone.
func writeError(w http.ResponseWriter, r *http.Request, e *apiError) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(e.retryAfter.Seconds())))
	}
	w.WriteHeader(e.status)
	if r.Method == http.MethodHead {
		return
	}
	_ = json.NewEncoder(w).Encode(errcode.Errors{e.err})
}

// notFoundCode picks the OCI code for a missing manifest, blob or name.
func notFoundCode(kind string) errcode.ErrorCode {
	switch kind {
	case kindManifest:
		return v2.ErrorCodeManifestUnknown
	case kindBlob:
		return v2.ErrorCodeBlobUnknown
	}
	return v2.ErrorCodeNameUnknown
}

// fromUpstream turns an upstream failure into the answer a client can act
// on. Upstream errors never carry credentials (the upstream package
// redacts them), so their text may be passed on as detail.
func fromUpstream(rt *route, err error) *apiError {
	var status *upstream.StatusError
	switch {
	case errors.Is(err, upstream.ErrOffline):
		return newAPIError(http.StatusNotFound, notFoundCode(rt.kind),
			"upstream %s is offline and %s is not cached", rt.registry, rt.describe())
	case errors.Is(err, upstream.ErrNotFound):
		return newAPIError(http.StatusNotFound, notFoundCode(rt.kind),
			"%s was not found on upstream %s", rt.describe(), rt.registry)
	case errors.As(err, &status) && status.StatusCode == http.StatusTooManyRequests:
		return newAPIError(http.StatusTooManyRequests, errcode.ErrorCodeTooManyRequests,
			"upstream %s is rate limiting pulls and %s is not cached; retry later", rt.registry, rt.describe())
	case errors.As(err, &status) && (status.StatusCode == http.StatusUnauthorized || status.StatusCode == http.StatusForbidden):
		return newAPIError(http.StatusForbidden, errcode.ErrorCodeDenied,
			"upstream %s refused the proxy access to %s (HTTP %d): check the credentials configured for this upstream and that the repository exists",
			rt.registry, rt.repository, status.StatusCode)
	case upstream.IsUnavailable(err):
		return newAPIError(http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable,
			"upstream %s is unavailable and %s is not cached: %v", rt.registry, rt.describe(), err)
	case errors.Is(err, cache.ErrDigestMismatch):
		return newAPIError(http.StatusBadGateway, errcode.ErrorCodeUnknown,
			"upstream %s sent content for %s that does not match its digest; nothing was cached", rt.registry, rt.describe())
	}
	return newAPIError(http.StatusBadGateway, errcode.ErrorCodeUnknown,
		"fetching %s from upstream %s failed: %v", rt.describe(), rt.registry, err)
}

func internalError(err error) *apiError {
	return newAPIError(http.StatusInternalServerError, errcode.ErrorCodeUnknown, "internal error: %v", err)
}
