package auth

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"
)

func expectAuth(t *testing.T, a authn.Authenticator, user, pass string) {
	t.Helper()
	got, err := a.Authorization()
	if err != nil {
		t.Fatalf("Authorization: %v", err)
	}
	if got.Username != user || got.Password != pass {
		t.Fatalf("Authorization = %q:%q, want %q:%q", got.Username, got.Password, user, pass)
	}
}

// eventually polls cond every 2 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// logBuffer is a concurrency-safe log sink for a text slog handler.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newTestLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	var b logBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log output:\n%s", b.String())
		}
	})
	return slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})), &b
}

// assertNoSecrets fails when any of texts contains one of the secrets, as
// is or base64-encoded.
func assertNoSecrets(t *testing.T, secrets []string, texts ...string) {
	t.Helper()
	for _, s := range secrets {
		forms := []string{s, b64(s), strings.TrimRight(b64(s), "=")}
		for _, text := range texts {
			for _, f := range forms {
				if f != "" && strings.Contains(text, f) {
					t.Errorf("secret %q leaked into: %s", s, text)
				}
			}
		}
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name, upstream string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "upstream" && l.GetValue() == upstream {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return -1
}

// metricsText is the exposition of every metric in reg, for leak checks.
func metricsText(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil || len(mfs) == 0 {
		t.Fatalf("gather: %d metrics, %v", len(mfs), err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		b.WriteString(mf.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// awaitTokenRefresh polls src like an upstream would until it hands out
// next, failing on any token the issuer no longer accepts, and checks the
// change came before the first token expired. It returns how long before.
func awaitTokenRefresh(t *testing.T, src Source, accepted func(string) bool, next string, firstExpires time.Time) time.Duration {
	t.Helper()
	var changedAt time.Time
	eventually(t, 5*time.Second, "token refresh", func() bool {
		a, err := src.Authorization()
		if err != nil {
			t.Fatalf("Authorization: %v", err)
		}
		if !accepted(a.Password) {
			t.Fatalf("Authorization gave a token the issuer no longer accepts at %s", time.Now().Format(time.StampMilli))
		}
		if a.Password == next {
			changedAt = time.Now()
			return true
		}
		return false
	})
	if !changedAt.Before(firstExpires) {
		t.Fatalf("refreshed %s after the first token expired", changedAt.Sub(firstExpires))
	}
	return firstExpires.Sub(changedAt).Round(time.Millisecond)
}
