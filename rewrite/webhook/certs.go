package webhook

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// SelfSigned is a fresh CA and a serving certificate it signed, for running
// without certificate files: the CA goes into the webhook configuration's
// caBundle (InjectCABundle), the certificate into the listener.
type SelfSigned struct {
	// CAPEM is the CA certificate, PEM-encoded, as caBundle wants it.
	CAPEM []byte
	// CertPEM and KeyPEM are the serving pair, PEM-encoded.
	CertPEM, KeyPEM []byte
	// Certificate is the serving pair, ready for tls.Config.
	Certificate tls.Certificate
}

// GenerateSelfSigned makes a CA and a serving certificate for hosts (DNS
// names or IP addresses), both valid from a minute before now (clock skew)
// for validity. The CA key is not kept: nothing is ever signed with it again.
func GenerateSelfSigned(hosts []string, validity time.Duration, now time.Time) (*SelfSigned, error) {
	if len(hosts) == 0 {
		return nil, errors.New("webhook: a serving certificate needs at least one host name")
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter := now.Add(-time.Minute), now.Add(validity)
	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "pullbroker webhook CA " + now.UTC().Format(time.RFC3339)},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("webhook: creating the CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("webhook: creating the serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	s := &SelfSigned{
		CAPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	if s.Certificate, err = tls.X509KeyPair(s.CertPEM, s.KeyPEM); err != nil {
		return nil, err
	}
	return s, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on supported platforms.
		panic(err)
	}
	return n
}

// ServiceHosts are the names under which the API server reaches a webhook
// Service: it uses "<service>.<namespace>.svc", the others cover clients
// that resolve the shorter or the fully qualified forms.
func ServiceHosts(service, namespace string) []string {
	return []string{
		service + "." + namespace + ".svc",
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc.cluster.local",
	}
}
