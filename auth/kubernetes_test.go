package auth

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/kubeclient"
)

// One kube-apiserver (with etcd) for the package, started by the first
// test that needs it and stopped by TestMain.
var (
	envOnce    sync.Once
	env        *envtest.Environment
	envErr     error
	kubeconfig string
	kube       kubernetes.Interface
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		_ = env.Stop()
	}
	if kubeconfig != "" {
		_ = os.RemoveAll(filepath.Dir(kubeconfig))
	}
	os.Exit(code)
}

// apiServer returns a kubeconfig path and a client for a real API server,
// or skips when the binaries are not there (fails under
// PULLBROKER_REQUIRE_TOOLS=1).
func apiServer(t *testing.T) (string, kubernetes.Interface) {
	t.Helper()
	// Skips (or fails under PULLBROKER_REQUIRE_TOOLS=1) outside the Once,
	// so a skip cannot leave the shared environment half made.
	testenv.KubeAssets(t)
	envOnce.Do(func() {
		start := time.Now()
		e := testenv.NewAPIServerEnvironment(t)
		if _, envErr = e.Start(); envErr != nil {
			return
		}
		env = e
		user, err := e.AddUser(envtest.User{Name: "pullbroker-auth-test", Groups: []string{"system:masters"}}, nil)
		if err != nil {
			envErr = err
			return
		}
		kc, err := user.KubeConfig()
		if err != nil {
			envErr = err
			return
		}
		dir, err := os.MkdirTemp("", "pullbroker-auth-kube")
		if err != nil {
			envErr = err
			return
		}
		kubeconfig = filepath.Join(dir, "kubeconfig")
		if envErr = os.WriteFile(kubeconfig, kc, 0o600); envErr != nil {
			return
		}
		cfg, err := kubeclient.RESTConfig(kubeconfig)
		if err != nil {
			envErr = err
			return
		}
		kube, envErr = kubernetes.NewForConfig(cfg)
		t.Logf("kube-apiserver up in %s", time.Since(start).Round(time.Millisecond))
	})
	if envErr != nil {
		t.Fatalf("envtest: %v", envErr)
	}
	return kubeconfig, kube
}

func createNamespace(t *testing.T, c kubernetes.Interface, name string) {
	t.Helper()
	_, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func dockerConfigSecretData(t *testing.T, registry, user, pass string) map[string][]byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{"auth": b64(user + ":" + pass)}}})
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{corev1.DockerConfigJsonKey: b}
}

type cred struct{ user, pass string }

// hammer calls Authorization from several goroutines until stop is closed
// and fails the test on any error or on a credential not in allowed: a
// rotation must never leave a pull without a credential or with half of
// one.
func hammer(t *testing.T, src Source, allowed func() map[cred]bool) (stop func() int64) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var calls atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				a, err := src.Authorization()
				calls.Add(1)
				if err != nil {
					t.Errorf("Authorization during rotation: %v", err)
					return
				}
				if !allowed()[cred{a.Username, a.Password}] {
					t.Errorf("Authorization during rotation gave %q:%q", a.Username, a.Password)
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	return func() int64 { close(done); wg.Wait(); return calls.Load() }
}

// TestKubernetesSecretRotation runs the dockerconfigjson Secret through
// rotation, malformed versions, deletion and re-creation against a real
// API server while Authorization is called continuously.
func TestKubernetesSecretRotation(t *testing.T) {
	kc, c := apiServer(t)
	ctx := context.Background()
	const ns, name, registry = "rotation", "registry-creds", "registry.example.com:5000"
	createNamespace(t, c, ns)
	secrets := c.CoreV1().Secrets(ns)

	a, b, d := cred{"robot-a", "pass-A-1111"}, cred{"robot-b", "pass-B-2222"}, cred{"robot-d", "pass-D-4444"}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       dockerConfigSecretData(t, registry, a.user, a.pass),
	}
	if _, err := secrets.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A neighbour in the same namespace must not be picked up.
	neighbour := sec.DeepCopy()
	neighbour.Name = "other"
	neighbour.Data = dockerConfigSecretData(t, registry, "intruder", "pass-X-9999")
	if _, err := secrets.Create(ctx, neighbour, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	logger, logs := newTestLogger(t)
	up := config.Upstream{
		Name:        registry,
		Endpoint:    "https://" + registry,
		Credentials: &config.Credentials{KubernetesSecret: &config.KubernetesSecret{Name: ns + "/" + name, Kubeconfig: kc}},
	}
	start := time.Now()
	src, err := For(ctx, up, Options{Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	t.Logf("For returned with the first credential in %s", time.Since(start).Round(time.Millisecond))
	expectAuth(t, src, a.user, a.pass)

	var allowedMu sync.Mutex
	allowed := map[cred]bool{a: true}
	allow := func(cs ...cred) {
		allowedMu.Lock()
		defer allowedMu.Unlock()
		allowed = map[cred]bool{}
		for _, c := range cs {
			allowed[c] = true
		}
	}
	stop := hammer(t, src, func() map[cred]bool { allowedMu.Lock(); defer allowedMu.Unlock(); return allowed })

	update := func(data map[string][]byte) {
		t.Helper()
		cur, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Data = data
		if _, err := secrets.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(want cred) time.Duration {
		t.Helper()
		return eventually(t, 5*time.Second, "credential "+want.user, func() bool {
			got, err := src.Authorization()
			return err == nil && got.Username == want.user && got.Password == want.pass
		})
	}
	errorsNow := func() float64 { return metricValue(t, reg, metricErrors, up.Name) }
	waitErrors := func(n float64) {
		t.Helper()
		eventually(t, 5*time.Second, "error count", func() bool { return errorsNow() >= n })
	}

	// Rotate A → B.
	allow(a, b)
	update(dockerConfigSecretData(t, registry, b.user, b.pass))
	t.Logf("rotation A→B seen %s after Update returned", waitFor(b).Round(100*time.Microsecond))
	allow(b)
	if !src.Healthy() || metricValue(t, reg, metricHealthy, up.Name) != 1 {
		t.Fatal("not healthy after a good rotation")
	}

	// Malformed versions (that the API server accepts): keep B.
	malformed := []map[string][]byte{
		{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + registry + `":{"auth":"!!not-base64!!"}}}`)},
		dockerConfigSecretData(t, "ghcr.io", "robot-c", "pass-C-3333"), // no entry for this registry
		{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)},
	}
	for i, data := range malformed {
		update(data)
		waitErrors(float64(i + 1))
		expectAuth(t, src, b.user, b.pass)
		if src.Healthy() || metricValue(t, reg, metricHealthy, up.Name) != 0 {
			t.Fatalf("malformed version %d: still healthy", i)
		}
	}

	// Back to good.
	allow(b, d)
	update(dockerConfigSecretData(t, registry, d.user, d.pass))
	waitFor(d)
	allow(d)

	// Delete: keep D.
	if err := secrets.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitErrors(float64(len(malformed) + 1))
	expectAuth(t, src, d.user, d.pass)
	if src.Healthy() {
		t.Fatal("healthy after the Secret was deleted")
	}

	// Re-created: used again.
	allow(d, a)
	sec.ResourceVersion = ""
	if _, err := secrets.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(a)
	calls := stop()
	t.Logf("%d Authorization calls during the rotations, none failed", calls)

	if got := metricValue(t, reg, metricReloads, up.Name); got != 4 { // A, B, D, A
		t.Fatalf("reloads = %v, want 4", got)
	}
	out := logs.String()
	for _, want := range []string{"keeping the last good credential", "was deleted", "no entry matches registry", "is not base64"} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q", want)
		}
	}
	assertNoSecrets(t, []string{a.pass, b.pass, "pass-C-3333", d.pass, "pass-X-9999", "!!not-base64!!"}, out, metricsText(t, reg))
}

// TestKubernetesBasicAuthSecret: a kubernetes.io/basic-auth Secret that
// does not exist when the Source starts, appears, rotates and loses its
// password.
func TestKubernetesBasicAuthSecret(t *testing.T) {
	kc, c := apiServer(t)
	ctx := context.Background()
	const ns, name = "basic", "hub-token"
	createNamespace(t, c, ns)
	secrets := c.CoreV1().Secrets(ns)

	reg := prometheus.NewRegistry()
	logger, logs := newTestLogger(t)
	up := config.Upstream{
		Name:        "docker.io",
		Endpoint:    "https://registry-1.docker.io",
		Credentials: &config.Credentials{KubernetesSecret: &config.KubernetesSecret{Name: ns + "/" + name, Kubeconfig: kc}},
	}
	start := time.Now()
	src, err := For(ctx, up, Options{Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	t.Logf("For returned after %s without the Secret", time.Since(start).Round(time.Millisecond))
	_, err = src.Authorization()
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Authorization before the Secret exists: %v", err)
	}
	if src.Healthy() || metricValue(t, reg, metricErrors, up.Name) != 1 {
		t.Fatal("a missing Secret is not reported")
	}

	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Type:       corev1.SecretTypeBasicAuth,
		Data:       map[string][]byte{"username": []byte("hubuser"), "password": []byte("dckr_pat_first")},
	}
	if _, err := secrets.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "first credential", func() bool {
		a, err := src.Authorization()
		return err == nil && a.Password == "dckr_pat_first"
	})
	expectAuth(t, src, "hubuser", "dckr_pat_first")

	sec.Data["password"] = []byte("dckr_pat_second")
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "rotated credential", func() bool {
		a, err := src.Authorization()
		return err == nil && a.Password == "dckr_pat_second"
	})

	// Only a username left: refused, the last good one stays.
	cur, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Data = map[string][]byte{"username": []byte("hubuser")}
	if _, err := secrets.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "error counted", func() bool { return metricValue(t, reg, metricErrors, up.Name) == 2 })
	expectAuth(t, src, "hubuser", "dckr_pat_second")
	assertNoSecrets(t, []string{"dckr_pat_first", "dckr_pat_second"}, logs.String(), metricsText(t, reg))
}

// TestGCPKeyFromSecret: the service-account key read from a Secret key,
// rotated live.
func TestGCPKeyFromSecret(t *testing.T) {
	kc, c := apiServer(t)
	ctx := context.Background()
	const ns, name = "gcp", "puller-key"
	createNamespace(t, c, ns)
	_, key1 := testServiceAccountKey(t, "https://oauth2.googleapis.com/token")
	_, key2 := testServiceAccountKey(t, "https://oauth2.googleapis.com/token")
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Data:       map[string][]byte{"sa.json": key1},
	}
	secrets := c.CoreV1().Secrets(ns)
	if _, err := secrets.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	src, err := For(ctx, gcpUpstream(&config.GCPServiceAccount{Secret: ns + "/" + name, SecretKey: "sa.json", Kubeconfig: kc, Exchange: "jsonKey"}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	expectAuth(t, src, "_json_key", string(key1))
	sec.Data["sa.json"] = key2
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "rotated key", func() bool {
		a, err := src.Authorization()
		return err == nil && a.Password == string(key2)
	})
	// The key under another name: refused, key2 stays.
	sec.Data = map[string][]byte{"key.json": key1}
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "unhealthy", func() bool { return !src.Healthy() })
	expectAuth(t, src, "_json_key", string(key2))
}

// TestKubernetesSecretStartErrors: configuration problems found at start
// are errors; none quotes a credential.
func TestKubernetesSecretStartErrors(t *testing.T) {
	dir := t.TempDir()
	badKC := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(badKC, []byte("apiVersion: v1\nkind: Config\nusers:\n- name: x\n  user:\n    token: [kubeconfig-token-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, kc := range []string{filepath.Join(dir, "missing"), badKC} {
		up := config.Upstream{Name: "r.example.com", Endpoint: "https://r.example.com",
			Credentials: &config.Credentials{KubernetesSecret: &config.KubernetesSecret{Name: "ns/name", Kubeconfig: kc}}}
		_, err := For(context.Background(), up, Options{})
		if err == nil || !strings.Contains(err.Error(), kc) {
			t.Fatalf("For with kubeconfig %s: %v", kc, err)
		}
		assertNoSecrets(t, []string{"kubeconfig-token-value"}, err.Error())
	}
}
