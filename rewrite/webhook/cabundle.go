package webhook

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/client-go/kubernetes/typed/admissionregistration/v1"
	"k8s.io/client-go/util/retry"
)

// maxBundledCAs bounds how many CAs a caBundle keeps. Each webhook replica
// started without certificate files makes its own CA; keeping the others'
// lets every replica be trusted, and the old one during a rolling update,
// while expired and excess CAs drop out.
const maxBundledCAs = 5

// InjectCABundle adds caPEM to the caBundle of every webhook in the named
// MutatingWebhookConfiguration, and reports whether it had to write. CAs
// already there are kept unless expired (at now) or beyond the newest
// maxBundledCAs.
func InjectCABundle(ctx context.Context, client admissionregistrationv1.MutatingWebhookConfigurationInterface, name string, caPEM []byte, now time.Time) (bool, error) {
	ours, err := parseCertificates(caPEM)
	if err != nil || len(ours) != 1 {
		return false, fmt.Errorf("webhook: the CA to inject must be one PEM certificate")
	}
	changed := false
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		changed = false
		cfg, err := client.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for i := range cfg.Webhooks {
			bundle := mergeBundle(cfg.Webhooks[i].ClientConfig.CABundle, ours[0], now)
			if !bytes.Equal(bundle, cfg.Webhooks[i].ClientConfig.CABundle) {
				cfg.Webhooks[i].ClientConfig.CABundle = bundle
				changed = true
			}
		}
		if !changed {
			return nil
		}
		_, err = client.Update(ctx, cfg, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("webhook: writing the caBundle of MutatingWebhookConfiguration %s: %w", name, err)
	}
	return changed, nil
}

// KeepCABundle injects caPEM now and again every interval until ctx ends:
// a GitOps tool that applies the configuration from Git would otherwise
// empty the caBundle, and with failurePolicy Ignore every Pod would then go
// through unrewritten without anyone noticing.
func KeepCABundle(ctx context.Context, client admissionregistrationv1.MutatingWebhookConfigurationInterface, name string, caPEM []byte, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		changed, err := InjectCABundle(ctx, client, name, caPEM, time.Now())
		switch {
		case err != nil && ctx.Err() == nil:
			log.Error("caBundle not written; the API server cannot call this webhook until it is", "webhookConfiguration", name, "err", err)
		case changed:
			log.Info("caBundle written", "webhookConfiguration", name)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// mergeBundle returns the PEM bundle of ours plus the still valid CAs of
// existing, newest first, at most maxBundledCAs. When existing already holds
// exactly those CAs it is returned as it is, so that replicas do not take
// turns rewriting the order.
func mergeBundle(existing []byte, ours *x509.Certificate, now time.Time) []byte {
	prev, err := parseCertificates(existing)
	certs := []*x509.Certificate{ours}
	for _, c := range prev {
		if !c.Equal(ours) && now.Before(c.NotAfter) {
			certs = append(certs, c)
		}
	}
	others := certs[1:]
	sort.SliceStable(others, func(i, j int) bool { return others[i].NotBefore.After(others[j].NotBefore) })
	if len(certs) > maxBundledCAs {
		certs = certs[:maxBundledCAs]
	}
	if err == nil && sameCertificates(prev, certs) {
		return existing
	}
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// sameCertificates reports whether a and b hold the same certificates, in
// any order, each once.
func sameCertificates(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]bool{}
	for _, c := range a {
		seen[string(c.Raw)] = true
	}
	if len(seen) != len(a) {
		return false
	}
	for _, c := range b {
		if !seen[string(c.Raw)] {
			return false
		}
	}
	return true
}

func parseCertificates(pemBytes []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return certs, err
		}
		certs = append(certs, c)
	}
}
