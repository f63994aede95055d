package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	v2 "github.com/distribution/distribution/v3/registry/api/v2"

	"github.com/pullbroker/pullbroker/internal/oci"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

// apiError is an OCI error with the HTTP status it is answered with.
type apiError struct {
	status int
	err    errcode.Error
	// cause is the detail behind a generic message: logged, never sent,
	// since it can hold internal addresses and storage paths.
	cause error
	// retryAfter, when set, is sent as Retry-After.
	retryAfter time.Duration
}

// withCause keeps err as the logged detail of e.
func (e *apiError) withCause(err error) *apiError {
	e.cause = err
	return e
}

// causeRecorder is the response writer that logs the request: it takes the
// cause of an error answer for the request's log line.
type causeRecorder interface{ recordCause(error) }

func (e *apiError) Error() string { return e.err.Error() }

func newAPIError(status int, code errcode.ErrorCode, format string, args ...any) *apiError {
	return &apiError{status: status, err: code.WithMessage(fmt.Sprintf(format, args...))}
}

// writeError answers with an OCI error body, {"errors":[{code,message,detail}]}.
// HEAD responses carry the status alone.
func writeError(w http.ResponseWriter, r *http.Request, e *apiError) {
	if rec, ok := w.(causeRecorder); ok && e.cause != nil {
		rec.recordCause(e.cause)
	}
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

// nameError answers a name that does not resolve to a configured
// upstream's repository.
func nameError(err error) *apiError {
	var ne *tags.NameError
	if errors.As(err, &ne) && ne.Invalid {
		return newAPIError(http.StatusBadRequest, v2.ErrorCodeNameInvalid, "%s", ne.Reason)
	}
	return newAPIError(http.StatusNotFound, v2.ErrorCodeNameUnknown, "%v", err)
}

// seeLog points a client at the detail it is not sent.
const seeLog = "the proxy's log has the cause under this response's X-Request-Id"

// fromUpstream turns a failure to answer from the cache or the upstream
// into the answer a client can act on. The answer names the upstream and a
// generic cause; the error itself, which may carry internal addresses and
// dial errors, is only logged.
func fromUpstream(rt *route, err error) *apiError {
	return answerFor(rt, err).withCause(err)
}

func answerFor(rt *route, err error) *apiError {
	var status *upstream.StatusError
	switch {
	case errors.As(err, new(*tags.NameError)):
		return nameError(err)
	case errors.Is(err, tags.ErrNotInLockFile):
		return newAPIError(http.StatusNotFound, v2.ErrorCodeManifestUnknown, "%v", err)
	case errors.Is(err, tags.ErrNotPinned):
		return newAPIError(http.StatusNotFound, v2.ErrorCodeManifestUnknown, "%v", err)
	case errors.Is(err, tags.ErrStorage):
		return internalError(err)
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
			"upstream %s is unavailable (%s) and %s is not cached", rt.registry, unavailableCause(err), rt.describe())
	case errors.Is(err, oci.ErrDigestMismatch):
		return newAPIError(http.StatusBadGateway, errcode.ErrorCodeUnknown,
			"upstream %s sent content for %s that does not match its digest; nothing was cached", rt.registry, rt.describe())
	case errors.Is(err, upstream.ErrInvalidResponse):
		return newAPIError(http.StatusBadGateway, errcode.ErrorCodeUnknown,
			"upstream %s sent an invalid answer for %s; nothing was passed on or cached", rt.registry, rt.describe())
	case errors.Is(err, upstream.ErrRealmNotAllowed):
		return newAPIError(http.StatusBadGateway, errcode.ErrorCodeUnknown,
			"upstream %s asked for credentials to be sent to a token realm it may not name (see its allowedRealmHosts); none were sent", rt.registry)
	}
	return newAPIError(http.StatusBadGateway, errcode.ErrorCodeUnknown,
		"fetching %s from upstream %s failed; %s", rt.describe(), rt.registry, seeLog)
}

// unavailableCause says why an upstream is unavailable without saying
// where it is.
func unavailableCause(err error) string {
	var status *upstream.StatusError
	var timeout interface{ Timeout() bool }
	switch {
	case errors.Is(err, upstream.ErrCircuitOpen):
		return "its recent requests failed; it is retried shortly"
	case errors.As(err, &status):
		return fmt.Sprintf("it answered HTTP %d", status.StatusCode)
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &timeout) && timeout.Timeout()):
		return "it did not answer in time"
	}
	return "it could not be reached"
}

// internalError answers a failure of the proxy itself (its storage, most
// often), whose detail is logged, not sent.
func internalError(err error) *apiError {
	return newAPIError(http.StatusInternalServerError, errcode.ErrorCodeUnknown, "internal error; %s", seeLog).withCause(err)
}
