// Package tlsreload serves a TLS certificate and key from files and picks up
// new ones when the files change, without a restart: cert-manager and
// Kubernetes Secret volumes replace them in place (Secret volumes by swapping
// a symlink), and a listener that kept the old pair would serve an expired
// certificate.
//
// The check is lazy: at most once per interval, during a handshake, the two
// files are read and, when their bytes changed, parsed again. That needs no
// watcher goroutine to start and stop, it sees a Secret volume's symlink
// swap that a watch on the old path would miss, and comparing bytes rather
// than modification times cannot miss a same-second rewrite.
package tlsreload

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultCheckInterval bounds how often a handshake looks at the files.
const DefaultCheckInterval = time.Second

// Reloader holds the current certificate of a pair of PEM files.
type Reloader struct {
	certFile, keyFile string
	interval          time.Duration
	logger            *slog.Logger
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	loaded    pemPair // the files as they were when cert was read
	failed    pemPair // the files as they were when they last failed to load
	lastErr   error   // so that a lasting problem is logged once, not per handshake
	lastCheck time.Time
}

// Option configures a Reloader.
type Option func(*Reloader)

// WithLogger logs reloads and failed reloads.
func WithLogger(l *slog.Logger) Option { return func(r *Reloader) { r.logger = l } }

// WithCheckInterval sets how often, at most, the files are looked at; 0
// looks at every handshake.
func WithCheckInterval(d time.Duration) Option { return func(r *Reloader) { r.interval = d } }

// New reads the pair once; a pair that does not load is an error here, while
// a later bad pair only logs and keeps the last good one serving.
func New(certFile, keyFile string, opts ...Option) (*Reloader, error) {
	r := &Reloader{
		certFile: certFile,
		keyFile:  keyFile,
		interval: DefaultCheckInterval,
		logger:   slog.New(slog.DiscardHandler),
		now:      time.Now,
	}
	for _, o := range opts {
		o(r)
	}
	files, err := readPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cert, err := files.parse()
	if err != nil {
		return nil, fmt.Errorf("tlsreload: %s and %s: %w", certFile, keyFile, err)
	}
	r.cert, r.loaded, r.lastCheck = cert, files, r.now()
	return r, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Certificate(), nil
}

// Certificate returns the current certificate, reloading it first when the
// files changed since the last look and the interval has passed.
func (r *Reloader) Certificate() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.lastCheck) >= r.interval {
		r.lastCheck = now
		_ = r.reloadIfChanged() // logged; the previous certificate keeps serving
	}
	return r.cert
}

// TLSConfig returns a server configuration that serves the current
// certificate. Add no Certificates to it: crypto/tls prefers those to
// GetCertificate whenever the client sends no server name (an IP address).
func (r *Reloader) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: r.GetCertificate, MinVersion: tls.VersionTLS12}
}

// Reload reads the files now, even within the check interval. On error the
// previous certificate stays.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastCheck = r.now()
	return r.reloadIfChanged()
}

func (r *Reloader) reloadIfChanged() error {
	files, err := readPair(r.certFile, r.keyFile)
	if err == nil {
		if files.equal(r.loaded) {
			return nil
		}
		if files.equal(r.failed) {
			return r.lastErr
		}
		var cert *tls.Certificate
		if cert, err = files.parse(); err == nil {
			r.cert, r.loaded, r.failed, r.lastErr = cert, files, pemPair{}, nil
			r.logger.Info("TLS certificate reloaded", "cert", r.certFile, "notAfter", cert.Leaf.NotAfter)
			return nil
		}
		// Replacing the two files is not atomic: the certificate may be
		// new and the key still old. The next change is tried again.
		r.failed = files
		err = fmt.Errorf("tlsreload: %s and %s: %w", r.certFile, r.keyFile, err)
	}
	if r.lastErr == nil || err.Error() != r.lastErr.Error() {
		r.logger.Warn("TLS certificate files changed but do not load; still serving the previous certificate", "err", err)
	}
	r.lastErr = err
	return err
}

// pemPair is the content of the two files.
type pemPair struct {
	cert, key []byte
}

func readPair(certFile, keyFile string) (pemPair, error) {
	c, err := os.ReadFile(certFile)
	if err != nil {
		return pemPair{}, fmt.Errorf("tlsreload: %w", err)
	}
	k, err := os.ReadFile(keyFile)
	if err != nil {
		return pemPair{}, fmt.Errorf("tlsreload: %w", err)
	}
	return pemPair{cert: c, key: k}, nil
}

func (p pemPair) equal(o pemPair) bool {
	return p.cert != nil && bytes.Equal(p.cert, o.cert) && bytes.Equal(p.key, o.key)
}

func (p pemPair) parse() (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair(p.cert, p.key)
	if err != nil {
		return nil, err
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &cert, nil
}
