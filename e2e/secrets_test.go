package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// secrets are the secret values of one test (upstream passwords, the admin token) with the forms
// they would take on the wire: raw, base64 alone, and base64 of "user:password" as in a Basic
// Authorization header. Every pullbroker log, CLI output, /metrics page and captured response of
// the test is searched for each of them.
type secrets struct {
	mu     sync.Mutex
	values map[string]string // searched form -> what it is, for the failure message
}

func newSecrets() *secrets { return &secrets{values: map[string]string{}} }

// randomSecret returns a value no test output can contain by chance.
func randomSecret(kind string) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return kind + "-" + hex.EncodeToString(b[:])
}

// add registers a secret; user, when not empty, adds the Basic header form.
func (s *secrets) add(what, value, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[value] = what
	s.values[base64.StdEncoding.EncodeToString([]byte(value))] = what + " (base64)"
	if user != "" {
		s.values[base64.StdEncoding.EncodeToString([]byte(user+":"+value))] = what + " (Basic credentials, base64)"
	}
}

// check fails the test if text (named where for the message) holds any secret.
func (s *secrets) check(t testing.TB, where string, text []byte) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for value, what := range s.values {
		if i := bytes.Index(text, []byte(value)); i >= 0 {
			start, end := max(0, i-200), min(len(text), i+len(value)+200)
			t.Errorf("LEAK: %s contains the %s:\n...%s...", where, what, text[start:end])
		}
	}
}

// longest is the length of the longest searched form, the overlap a streaming scan must keep.
func (s *secrets) longest() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for v := range s.values {
		n = max(n, len(v))
	}
	return n
}

// leakScanner is an io.Writer that searches a stream of any length for the secrets, keeping only
// an overlap between writes; it records where each secret was seen.
type leakScanner struct {
	s     *secrets
	where string
	mu    sync.Mutex
	tail  []byte
	found []string
	n     int64
}

func (s *secrets) scanner(where string) *leakScanner { return &leakScanner{s: s, where: where} }

func (l *leakScanner) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	buf := append(l.tail, p...)
	l.s.mu.Lock()
	for value, what := range l.s.values {
		if bytes.Contains(buf, []byte(value)) && !strings.Contains(strings.Join(l.found, "\n"), what) {
			l.found = append(l.found, what)
		}
	}
	l.s.mu.Unlock()
	keep := l.s.longest()
	if len(buf) > keep {
		buf = buf[len(buf)-keep:]
	}
	l.tail = append(l.tail[:0], buf...)
	l.n += int64(len(p))
	return len(p), nil
}

// report fails the test for every secret the scanner saw.
func (l *leakScanner) report(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, what := range l.found {
		t.Errorf("LEAK: %s contains the %s", l.where, what)
	}
}

// recorder is a testing.TB that keeps the errors reported to it instead of failing.
type recorder struct {
	testing.TB
	errors []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// TestLeakSearchFindsSecrets keeps the leak checks honest: each form of a secret is found, in a
// whole text and split across the writes of a stream.
func TestLeakSearchFindsSecrets(t *testing.T) {
	s := newSecrets()
	password := randomSecret("pw")
	s.add("password", password, "user")
	basicForm := base64.StdEncoding.EncodeToString([]byte("user:" + password))
	for _, text := range []string{
		"x " + password + " y",
		"Authorization: Basic " + basicForm,
		`{"p":"` + base64.StdEncoding.EncodeToString([]byte(password)) + `"}`,
	} {
		r := &recorder{TB: t}
		s.check(r, "text", []byte(text))
		if len(r.errors) != 1 {
			t.Errorf("check(%q) reported %d leaks, want 1", text, len(r.errors))
		}
		sc := s.scanner("stream")
		for i := 0; i < len(text); i += 3 { // three bytes per write: every secret spans writes
			_, _ = sc.Write([]byte(text[i:min(i+3, len(text))]))
		}
		r = &recorder{TB: t}
		sc.report(r)
		if len(r.errors) != 1 {
			t.Errorf("streamed %q: %d leaks reported, want 1", text, len(r.errors))
		}
	}
	r := &recorder{TB: t}
	s.check(r, "clean", []byte("nothing secret here "+password[:len(password)-1]))
	if len(r.errors) != 0 {
		t.Errorf("a clean text reported leaks: %v", r.errors)
	}
}
