package proxy

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullbroker/pullbroker/config"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func htpasswdLine(t *testing.T, user, pass string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + string(h) + "\n"
}

func TestClientAccess(t *testing.T) {
	htpasswd := writeFile(t, htpasswdLine(t, "alice", "wonderland"))
	tokens := writeFile(t, "# CI runners\ntok-123\n")
	req := func(remote string, auth ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.RemoteAddr = remote
		if len(auth) == 2 {
			r.SetBasicAuth(auth[0], auth[1])
		} else if len(auth) == 1 {
			r.Header.Set("Authorization", "Bearer "+auth[0])
		}
		// A forged forwarding header must not matter.
		r.Header.Set("X-Forwarded-For", "10.1.2.3")
		return r
	}
	tests := []struct {
		name   string
		access config.Access
		req    *http.Request
		want   int // 0 = allowed
	}{
		{"open by default", config.Access{}, req("203.0.113.9:1234"), 0},
		{"inside allowed network", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}}, req("10.9.9.9:1"), 0},
		{"outside, no credentials configured", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}}, req("203.0.113.9:1"), 403},
		{"IPv4-mapped IPv6 inside", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}}, req("[::ffff:10.0.0.1]:1"), 0},
		{"outside, valid htpasswd user", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}, HtpasswdFile: htpasswd}, req("203.0.113.9:1", "alice", "wonderland"), 0},
		{"outside, wrong password", config.Access{AllowedNetworks: []string{"10.0.0.0/8"}, HtpasswdFile: htpasswd}, req("203.0.113.9:1", "alice", "nope"), 401},
		{"outside, unknown user", config.Access{HtpasswdFile: htpasswd}, req("10.0.0.1:1", "bob", "wonderland"), 401},
		{"credentials required everywhere", config.Access{HtpasswdFile: htpasswd}, req("10.0.0.1:1"), 401},
		{"static token", config.Access{TokensFile: tokens}, req("10.0.0.1:1", "tok-123"), 0},
		{"bad token", config.Access{TokensFile: tokens}, req("10.0.0.1:1", "tok-124"), 401},
		{"comment is no token", config.Access{TokensFile: tokens}, req("10.0.0.1:1", "# CI runners"), 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := newAccess(&config.Config{Access: tt.access})
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			if e := a.checkClient(tt.req); e != nil {
				got = e.status
			}
			if got != tt.want {
				t.Fatalf("status = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestCredentialFilesRotateWithoutRestart(t *testing.T) {
	tokens := writeFile(t, "old-token\n")
	a, err := newAccess(&config.Config{Access: config.Access{TokensFile: tokens}})
	if err != nil {
		t.Fatal(err)
	}
	if !a.tokens.checkToken("old-token") {
		t.Fatal("old token refused")
	}
	if err := os.WriteFile(tokens, []byte("new-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Second)
	_ = os.Chtimes(tokens, later, later)
	if a.tokens.checkToken("old-token") || !a.tokens.checkToken("new-token") {
		t.Fatal("rotated token file not picked up")
	}
	if err := os.Remove(tokens); err != nil {
		t.Fatal(err)
	}
	if !a.tokens.checkToken("new-token") {
		t.Fatal("a vanished file should keep the last good tokens")
	}
}

func TestRepositoryGlobs(t *testing.T) {
	cfg := &config.Config{Upstreams: []config.Upstream{
		{Name: "private.example", Repositories: []string{"team/*", "shared/**"}},
		{Name: "open.example"},
	}}
	a, err := newAccess(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		registry, repo string
		allowed        bool
	}{
		{"private.example", "team/app", true},
		{"private.example", "team/app/sub", false},
		{"private.example", "shared/a/b/c", true},
		{"private.example", "other/app", false},
		{"open.example", "anything/at/all", true},
	} {
		err := a.allowRepository(&route{registry: tt.registry, repository: tt.repo})
		if (err == nil) != tt.allowed {
			t.Errorf("%s/%s allowed = %v, want %v", tt.registry, tt.repo, err == nil, tt.allowed)
		}
		if err != nil && (err.status != 403 || err.err.Code.String() != "DENIED") {
			t.Errorf("%s/%s refused with %d %s", tt.registry, tt.repo, err.status, err.err.Code)
		}
	}
}
