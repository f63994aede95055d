package auth

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Token refresh tuning shared by the exchanging sources: after a failed
// exchange the next one waits tokenRetryBackoff; a token whose lifetime is
// not known is used for its source's refresh margin, then exchanged again.
var tokenRetryBackoff = 2 * time.Second

// exchangedToken is one short-lived credential obtained from an exchange.
type exchangedToken struct {
	username, password string
	// expiry is when the issuer stops accepting it; zero when not told.
	expiry time.Time
}

// tokenExchanger obtains a fresh token: the GCP JWT-bearer grant, ECR's
// GetAuthorizationToken. Errors must say what went wrong without quoting a
// secret: they are returned to callers and logged.
type tokenExchanger interface {
	exchange(ctx context.Context) (exchangedToken, error)
	// logAttrs name where tokens come from, for log lines.
	logAttrs() []any
}

// tokenMaterial caches the token of an exchanger until shortly before it
// expires. The exchange runs on the first use and then on the first use
// after refreshAt, so an idle source asks nobody; a failed refresh keeps
// using a token that has not expired yet and is retried after
// tokenRetryBackoff.
type tokenMaterial struct {
	s  *source
	ex tokenExchanger
	// margin: a token is replaced when less than min(margin, a fifth of
	// its lifetime) is left.
	margin time.Duration

	mu        sync.Mutex
	tok       *exchangedToken
	refreshAt time.Time // replace the token from here on
	validTo   time.Time // the token may be sent until here
	retryAt   time.Time // no exchange before here (after a failure)
	lastErr   error
}

func newTokenMaterial(s *source, ex tokenExchanger, margin time.Duration) *tokenMaterial {
	return &tokenMaterial{s: s, ex: ex, margin: margin}
}

func (t *tokenMaterial) authFor(context.Context, string) (*authn.AuthConfig, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if t.tok != nil && now.Before(t.refreshAt) {
		return t.auth(), nil
	}
	if now.Before(t.retryAt) {
		if t.tok != nil && now.Before(t.validTo) {
			return t.auth(), nil
		}
		return nil, t.lastErr
	}
	// The exchange runs under the Source's context, not the caller's: a
	// cancelled pull must not fail the refresh for the pulls waiting on it.
	tok, err := t.ex.exchange(t.s.baseCtx)
	if err != nil {
		t.lastErr = err
		t.retryAt = now.Add(tokenRetryBackoff)
		stillValid := t.tok != nil && now.Before(t.validTo)
		t.s.tokenFailed(t.ex.logAttrs(), err, stillValid)
		if stillValid {
			return t.auth(), nil
		}
		return nil, err
	}
	got := time.Now()
	t.tok = &tok
	t.retryAt = time.Time{}
	t.lastErr = nil
	life := tok.expiry.Sub(got)
	if tok.expiry.IsZero() || life <= 0 {
		// No lifetime given: use it for a while, then ask again.
		life = t.margin
		t.validTo = got.Add(life)
		t.refreshAt = t.validTo
	} else {
		t.refreshAt = tok.expiry.Add(-min(t.margin, life/5))
		t.validTo = tok.expiry.Add(-min(10*time.Second, life/10))
	}
	t.s.tokenRefreshed(t.ex.logAttrs(), life)
	return t.auth(), nil
}

func (t *tokenMaterial) auth() *authn.AuthConfig {
	return &authn.AuthConfig{Username: t.tok.username, Password: t.tok.password}
}

// tokenRefreshed and tokenFailed report the outcome of an exchange.
func (s *source) tokenRefreshed(where []any, life time.Duration) {
	s.setHealth(func() { s.tokenOK = true })
	s.metrics.reloads.Inc()
	s.log.Debug("token obtained", slices.Concat(where, []any{"lifetime", life.Round(time.Second).String()})...)
}

func (s *source) tokenFailed(where []any, err error, stillValid bool) {
	s.setHealth(func() { s.tokenOK = false })
	s.metrics.errors.Inc()
	args := slices.Concat(where, []any{"reason", err.Error()})
	if stillValid {
		s.log.Warn("token refresh failed; the current token is still valid", args...)
	} else {
		s.log.Error("token refresh failed", args...)
	}
}
