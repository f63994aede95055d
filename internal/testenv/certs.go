package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// WriteCertPair writes a PEM certificate and key as dir/tls.crt and
// dir/tls.key, each replaced by rename as a Secret volume does, so a
// reloader never reads a half-written file. It returns the two paths.
func WriteCertPair(t testing.TB, dir string, certPEM, keyPEM []byte) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for file, content := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}
