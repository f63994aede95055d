package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestSecretRotationWhilePulling is issue 3's rotation proof through the
// whole proxy: the upstream credential lives only in a Kubernetes Secret
// on a real API server; it is rotated while clients pull, then made
// malformed; no pull fails and the upstream sees the new password.
func TestSecretRotationWhilePulling(t *testing.T) {
	restCfg := testenv.StartAPIServer(t)
	kube := kubernetes.NewForConfigOrDie(restCfg)
	const user, oldPass, newPass = "robot", "old-secret-password", "new-secret-password"
	up := fakeregistry.New(t, fakeregistry.WithBasic(user, oldPass))
	up.PushRandom("team/app", "v1")

	ctx := t.Context()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pullbroker"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "registry", Namespace: "pullbroker"},
		Type:       corev1.SecretTypeBasicAuth,
		StringData: map[string]string{"username": user, "password": oldPass},
	}
	if _, err := kube.CoreV1().Secrets("pullbroker").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
storage: {driver: inmemory, parameters: {}}
disableDefaultUpstreams: true
defaultUpstream: ""
upstreams:
  - name: upstream.test
    endpoint: %s
    # Every tag request revalidates, so every pull presents the credential.
    tagTTL: 1ns
    credentials:
      kubernetesSecret: {name: pullbroker/registry, kubeconfig: %q}
`, up.URL(), testenv.KubeconfigFile(t, restCfg))), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	a, err := build(ctx, cfg, newLogger(cfg.Log, logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	srv := httptest.NewServer(a.handler)
	t.Cleanup(srv.Close)

	var pulls, failures atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Head(srv.URL + "/v2/upstream.test/team/app/manifests/v1")
				pulls.Add(1)
				if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Warning") != "" {
					failures.Add(1)
					if err == nil {
						t.Errorf("pull: %s %q", resp.Status, resp.Header.Get("Warning"))
					}
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("%s did not happen within 15s\n%s", what, logs)
			}
		}
	}
	waitFor("pulls with the first password", func() bool { return up.PasswordUses(oldPass) > 20 })

	// Rotation as an operator does it: the new password becomes valid,
	// the Secret changes, the old password is revoked.
	up.SetPasswords(newPass, oldPass)
	secret.StringData["password"] = newPass
	if _, err := kube.CoreV1().Secrets("pullbroker").Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the upstream seeing the new password", func() bool { return up.PasswordUses(newPass) > 0 })
	up.SetPasswords(newPass)
	before := pulls.Load()
	waitFor("pulls after the old password was revoked", func() bool { return pulls.Load() > before+50 })

	// A malformed Secret keeps the last good credential.
	broken := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "registry", Namespace: "pullbroker"},
		Type:       corev1.SecretTypeBasicAuth,
		Data:       map[string][]byte{"username": []byte(user)},
	}
	if _, err := kube.CoreV1().Secrets("pullbroker").Update(ctx, broken, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the broken Secret counted as a credential error", func() bool {
		return gatheredValue(t, a, "pullbroker_credential_errors_total") >= 1
	})
	before = pulls.Load()
	waitFor("pulls after the Secret was broken", func() bool { return pulls.Load() > before+50 })
	close(stop)
	wg.Wait()

	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d pulls failed during the rotation\n%s", n, pulls.Load(), logs)
	}
	t.Logf("%d pulls, none failed; upstream saw the old password %d times and the new one %d times",
		pulls.Load(), up.PasswordUses(oldPass), up.PasswordUses(newPass))
	for _, secretValue := range []string{oldPass, newPass} {
		if strings.Contains(logs.String(), secretValue) {
			t.Fatalf("the log contains a password")
		}
	}
}

// gatheredValue sums a metric family's series in the app's registry.
func gatheredValue(t *testing.T, a *app, name string) float64 {
	t.Helper()
	families, err := a.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
