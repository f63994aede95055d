// Package tlsreload serves a TLS certificate and key from files and picks up
// new ones when the files change, without a restart: cert-manager and
// Kubernetes Secret volumes replace them in place (Secret volumes by swapping
// a symlink), and a listener that kept the old pair would serve an expired
// certificate.
//
// The files are watched with internal/filewatch: at most once per interval,
// during a handshake, they are read and, when their content changed, parsed
// again; a pair that does not load (the certificate replaced, the key not
// yet) is logged once and the previous certificate keeps serving.
package tlsreload

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"github.com/pullbroker/pullbroker/internal/filewatch"
)

// DefaultCheckInterval bounds how often a handshake looks at the files.
const DefaultCheckInterval = filewatch.DefaultInterval

// Reloader holds the current certificate of a pair of PEM files.
type Reloader struct {
	certFile, keyFile string
	pair              *filewatch.Value[*tls.Certificate]
}

type settings struct {
	interval time.Duration
	logger   *slog.Logger
}

// Option configures a Reloader.
type Option func(*settings)

// WithLogger logs reloads and failed reloads.
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// WithCheckInterval sets how often, at most, the files are looked at; 0
// looks at every handshake.
func WithCheckInterval(d time.Duration) Option { return func(s *settings) { s.interval = d } }

// New reads the pair once; a pair that does not load is an error here, while
// a later bad pair only logs and keeps the last good one serving.
func New(certFile, keyFile string, opts ...Option) (*Reloader, error) {
	s := settings{interval: DefaultCheckInterval, logger: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&s)
	}
	if s.interval == 0 {
		s.interval = -1 // filewatch: on every Get
	}
	pair, err := filewatch.NewSet([]string{certFile, keyFile}, parsePair, filewatch.Options[*tls.Certificate]{
		Interval: s.interval,
		OnReload: func(cert *tls.Certificate) {
			s.logger.Info("TLS certificate reloaded", "cert", certFile, "notAfter", cert.Leaf.NotAfter)
		},
		OnError: func(err error) {
			s.logger.Warn("TLS certificate files changed but do not load; still serving the previous certificate",
				"cert", certFile, "key", keyFile, "err", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("tlsreload: %s and %s: %w", certFile, keyFile, err)
	}
	return &Reloader{certFile: certFile, keyFile: keyFile, pair: pair}, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Certificate(), nil
}

// Certificate returns the current certificate, reloading it first when the
// files changed since the last look and the interval has passed.
func (r *Reloader) Certificate() *tls.Certificate { return r.pair.Get() }

// TLSConfig returns a server configuration that serves the current
// certificate. Add no Certificates to it: crypto/tls prefers those to
// GetCertificate whenever the client sends no server name (an IP address).
func (r *Reloader) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: r.GetCertificate, MinVersion: tls.VersionTLS12}
}

// Reload reads the files now, even within the check interval. On error the
// previous certificate stays.
func (r *Reloader) Reload() error {
	if err := r.pair.Check(); err != nil {
		return fmt.Errorf("tlsreload: %s and %s: %w", r.certFile, r.keyFile, err)
	}
	return nil
}

func parsePair(files [][]byte) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair(files[0], files[1])
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
