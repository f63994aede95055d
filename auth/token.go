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
const tokenRetryBackoff = 2 * time.Second

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
// after refreshAt, so an idle source asks nobody. One exchange runs at a
// time: while it does, callers that can be given a token that is still
// valid get it at once, and only callers with nothing to send wait. A
// failed refresh keeps using a token that has not expired yet and is
// retried after tokenRetryBackoff.
type tokenMaterial struct {
	s  *source
	ex tokenExchanger
	// margin: a token is replaced when less than min(margin, a fifth of
	// its lifetime) is left.
	margin time.Duration

	// exchanging is held for the length of an exchange; it is taken
	// before mu, or tried (never waited for) while mu is held.
	exchanging sync.Mutex

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
	if a, due, err := t.cached(time.Now()); !due {
		t.mu.Unlock()
		return a, err
	}
	if t.valid(time.Now()) {
		// Due for a refresh, but the token in hand still works: refresh
		// it unless another caller already is, then use it meanwhile.
		if !t.exchanging.TryLock() {
			a := t.auth()
			t.mu.Unlock()
			return a, nil
		}
		t.mu.Unlock()
	} else {
		// Nothing to send: wait for the exchange under way, if any, and
		// take its outcome, or run one.
		t.mu.Unlock()
		t.exchanging.Lock()
		t.mu.Lock()
		a, due, err := t.cached(time.Now())
		t.mu.Unlock()
		if !due {
			t.exchanging.Unlock()
			return a, err
		}
	}
	defer t.exchanging.Unlock()
	return t.refresh()
}

// cached answers from the state when no exchange is due; t.mu is held.
func (t *tokenMaterial) cached(now time.Time) (a *authn.AuthConfig, due bool, err error) {
	if t.tok != nil && now.Before(t.refreshAt) {
		return t.auth(), false, nil
	}
	if now.Before(t.retryAt) {
		if t.valid(now) {
			return t.auth(), false, nil
		}
		return nil, false, t.lastErr
	}
	return nil, true, nil
}

// valid: there is a token and it may still be sent; t.mu is held.
func (t *tokenMaterial) valid(now time.Time) bool {
	return t.tok != nil && now.Before(t.validTo)
}

// refresh runs one exchange and takes its outcome into use; t.exchanging
// is held, t.mu is not.
func (t *tokenMaterial) refresh() (*authn.AuthConfig, error) {
	// The exchange runs under the Source's context, not the caller's: a
	// cancelled pull must not fail the refresh for the pulls waiting on it.
	tok, err := t.ex.exchange(t.s.baseCtx)
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if err != nil {
		t.lastErr = err
		t.retryAt = now.Add(tokenRetryBackoff)
		stillValid := t.valid(now)
		t.s.tokenFailed(t.ex.logAttrs(), err, stillValid)
		if stillValid {
			return t.auth(), nil
		}
		return nil, err
	}
	t.tok = &tok
	t.retryAt = time.Time{}
	t.lastErr = nil
	life := tok.expiry.Sub(now)
	if tok.expiry.IsZero() || life <= 0 {
		// No lifetime given: use it for a while, then ask again.
		life = t.margin
		t.validTo = now.Add(life)
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
