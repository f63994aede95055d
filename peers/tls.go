package peers

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/pullbroker/pullbroker/tlsreload"
)

// TLSFiles are the PEM files of mutual TLS between peers
// (cluster.peerTLS): this replica's pair, and the CA that signs every
// peer's certificate.
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
}

// mutualTLS returns the configuration of the peer listener, which wants a
// client certificate the peer CA signed, and that of requests to peers,
// which present this replica's certificate and accept a server the peer
// CA signed.
func mutualTLS(files TLSFiles, log *slog.Logger) (server, client *tls.Config, err error) {
	pair, err := tlsreload.New(files.CertFile, files.KeyFile, tlsreload.WithLogger(log))
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.peerTLS: %w", err)
	}
	pem, err := os.ReadFile(files.CAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.peerTLS.caFile: %w", err)
	}
	peerCA := x509.NewCertPool()
	if !peerCA.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("cluster.peerTLS.caFile: %s holds no PEM certificate", files.CAFile)
	}
	server = &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: pair.GetCertificate,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      peerCA,
	}
	client = &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return pair.Certificate(), nil
		},
		// A peer is reached as the peer set names it (often a Pod IP),
		// which its certificate need not name: the peer CA's signature is
		// what makes it a peer, checked in VerifyConnection instead of
		// the host name check.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeer(cs.PeerCertificates, peerCA)
		},
	}
	return server, client, nil
}

// verifyPeer checks that a peer's certificate chains to the peer CA and
// may serve.
func verifyPeer(chain []*x509.Certificate, peerCA *x509.CertPool) error {
	if len(chain) == 0 {
		return errors.New("the peer sent no certificate")
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         peerCA,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("the peer's certificate is not one of the peer CA's: %w", err)
	}
	return nil
}
