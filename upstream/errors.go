package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// The errors a Client's calls fail with, besides *StatusError. A manifest
// whose bytes do not hash to the digest asked for or announced fails with
// oci.ErrDigestMismatch, which is not "unavailable" either: an upstream that
// serves wrong bytes is not answered from by accident.
var (
	// ErrNotFound: the upstream answered 404 (or, for Referrers, has no
	// referrers API). A *StatusError carrying 404 matches it with errors.Is.
	ErrNotFound = errors.New("not found upstream")
	// ErrOffline: the client is in offline mode and opened no connection.
	ErrOffline = errors.New("upstream is offline")
	// ErrCircuitOpen: recent calls failed as unavailable, so this call was
	// refused at once instead of waiting for another timeout.
	ErrCircuitOpen = errors.New("upstream circuit open")
	// ErrManifestTooLarge: the manifest exceeds oci.MaxManifestSize.
	ErrManifestTooLarge = errors.New("manifest too large")
	// ErrInvalidResponse: the upstream answered with something the call
	// does not return: a tag list that is not JSON, a manifest of a media
	// type that is not a manifest's, or a redirect where none is followed.
	// Nothing of it is passed on or cached. Not "unavailable": the upstream
	// did answer, wrongly, and asking again would get the same answer.
	ErrInvalidResponse = errors.New("invalid upstream response")
	// ErrRealmNotAllowed: the upstream's Bearer challenge names a token
	// realm on a host outside allowedRealmHosts; no credential was sent.
	ErrRealmNotAllowed = errors.New("token realm not allowed")
)

// StatusError is an unexpected HTTP status from the upstream (or its token
// server). URL carries no credentials and no query string beyond the
// pagination and filter parameters.
type StatusError struct {
	Method     string
	URL        string
	StatusCode int
	// Codes are the OCI error codes of the body ("MANIFEST_UNKNOWN", ...).
	Codes []string
	// Message is the first error message of the body, or the status text.
	Message string
}

func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d %s", e.Method, e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	if len(e.Codes) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Codes, ","))
	}
	if e.Message != "" && e.Message != http.StatusText(e.StatusCode) {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// Is lets errors.Is(err, ErrNotFound) hold for a 404.
func (e *StatusError) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound
}

// unavailable reports whether the status means "try again later" rather
// than "the answer is no".
func (e *StatusError) unavailable() bool { return statusUnavailable(e.StatusCode) }

func statusUnavailable(code int) bool {
	return code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout
}

// unreachableError marks a request that got no HTTP response at all:
// refused or reset connection, DNS failure, timeout, connection cut off.
// instrumentedTransport wraps every error of the base transport in it, so
// the mark comes from where the error arose, not from guessing its type
// (net/http reports several of these as plain errors).
type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// Timeout keeps url.Error.Timeout working through the wrapper.
func (e *unreachableError) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.As(e.err, &t) && t.Timeout()
}

// IsUnavailable reports whether err means the upstream could not give an
// answer now: network errors, timeouts, 5xx, 429 (and 408), ErrOffline,
// ErrCircuitOpen. These are the cases where the proxy serves stale cache.
// A caller's own cancellation is not unavailability, nor is a TLS
// certificate or protocol mismatch (a configuration error), nor an answer
// refused as ErrInvalidResponse or ErrRealmNotAllowed.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrOffline) || errors.Is(err, ErrCircuitOpen) {
		return true
	}
	if errors.Is(err, ErrInvalidResponse) || errors.Is(err, ErrRealmNotAllowed) {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.unavailable()
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	var ue *unreachableError
	return errors.As(err, &ue) || errors.Is(err, context.DeadlineExceeded)
}

// isTLSMisconfiguration recognises TLS failures that no retry will fix: an
// untrusted or mismatched certificate, a plain-http server on an https
// endpoint, a handshake the server rejects.
func isTLSMisconfiguration(err error) bool {
	var verifyErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var alertErr tls.AlertError
	var unknownAuthority x509.UnknownAuthorityError
	var hostnameErr x509.HostnameError
	var invalidCert x509.CertificateInvalidError
	return errors.As(err, &verifyErr) || errors.As(err, &recordErr) || errors.As(err, &alertErr) ||
		errors.As(err, &unknownAuthority) || errors.As(err, &hostnameErr) || errors.As(err, &invalidCert)
}

// classifyRequestError turns an error of http.Client.Do (or of the
// transport set-up, which pings and fetches a token) into one of: the
// caller's cancellation, one of this package's own refusals, a
// *StatusError (from ggcr's token dance), an error wrapping
// *unreachableError, or a plain error whose text is safe to show.
func classifyRequestError(err error) error {
	if err == nil {
		return nil
	}
	var se *StatusError
	if errors.As(err, &se) {
		return err // classified already, by the transport set-up
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return statusErrorFromTransport(te)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, ErrOffline) || errors.Is(err, ErrCircuitOpen) ||
		errors.Is(err, ErrInvalidResponse) || errors.Is(err, ErrRealmNotAllowed) {
		return err
	}
	var ue *unreachableError
	if (errors.As(err, &ue) && !isTLSMisconfiguration(err)) || errors.Is(err, context.DeadlineExceeded) {
		if ue == nil {
			return &unreachableError{err: err}
		}
		return err
	}
	// Anything else (an invalid token realm, a malformed token response,
	// a failing Authenticator, a TLS mismatch) is a configuration problem.
	return errors.New(firstLine(err.Error()))
}

func statusErrorFromTransport(te *transport.Error) *StatusError {
	se := &StatusError{StatusCode: te.StatusCode}
	if te.Request != nil {
		se.Method = te.Request.Method
		se.URL = redactURL(te.Request.URL)
	}
	for _, d := range te.Errors {
		se.Codes = append(se.Codes, string(d.Code))
		if se.Message == "" {
			se.Message = d.Message
		}
	}
	if se.Message == "" {
		se.Message = http.StatusText(te.StatusCode)
	}
	return se
}

// keptQueryParams are the only query parameters shown in error URLs: the
// pagination and filter values the proxy sends. Token requests carry scope
// and service, and a redirect to blob storage carries signatures.
var keptQueryParams = []string{"n", "last", "artifactType"}

func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	r := *u
	r.User = nil
	r.Fragment = ""
	q := url.Values{}
	orig := u.Query()
	for _, k := range keptQueryParams {
		if v, ok := orig[k]; ok {
			q[k] = v
		}
	}
	r.RawQuery = q.Encode()
	return r.String()
}
