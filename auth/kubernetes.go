package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/kubeclient"
)

func (s *source) startKubernetesSecret(ctx context.Context, k *config.KubernetesSecret) error {
	return s.startSecretWatch(ctx, k.Name, k.Kubeconfig, s.secretMaterial)
}

// secretMaterial reads a kubernetes.io/dockerconfigjson (or legacy
// kubernetes.io/dockercfg) or kubernetes.io/basic-auth Secret.
func (s *source) secretMaterial(sec *corev1.Secret) (material, error) {
	switch sec.Type {
	case corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg:
		key := corev1.DockerConfigJsonKey
		if sec.Type == corev1.SecretTypeDockercfg {
			key = corev1.DockerConfigKey
		}
		data := sec.Data[key]
		if len(data) == 0 {
			return nil, fmt.Errorf("has no data under key %q", key)
		}
		m, err := s.keyringMaterial(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		return m, nil
	case corev1.SecretTypeBasicAuth:
		u, p := string(sec.Data[corev1.BasicAuthUsernameKey]), string(sec.Data[corev1.BasicAuthPasswordKey])
		if u == "" || p == "" {
			return nil, fmt.Errorf("needs both %q and %q", corev1.BasicAuthUsernameKey, corev1.BasicAuthPasswordKey)
		}
		return basicMaterial{username: u, password: p}, nil
	}
	return nil, fmt.Errorf("has type %q; want %s or %s", sec.Type, corev1.SecretTypeDockerConfigJson, corev1.SecretTypeBasicAuth)
}

// startSecretWatch watches the one Secret namespace/name with an informer
// scoped to its namespace and, by field selector, to its name. parse turns
// each version of the Secret into a credential; a version that does not
// parse, and the Secret's deletion, leave the last good credential in use.
// It returns once the first list is handled or Options.SyncTimeout passed.
func (s *source) startSecretWatch(ctx context.Context, nsName, kubeconfig string, parse func(*corev1.Secret) (material, error)) error {
	ns, name, ok := strings.Cut(nsName, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("secret %q is not namespace/name", nsName)
	}
	cfg, err := kubeclient.RESTConfig(kubeconfig)
	if err != nil {
		return err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "pullbroker"
	// The core/v1 client alone: the full clientset would link every API
	// group into the binary.
	client, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	w := &secretWatch{s: s, name: name, what: "Secret " + nsName, parse: parse}
	lw := cache.NewFilteredListWatchFromClient(client.RESTClient(), "secrets", ns, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	})
	inf := cache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, cache.Indexers{})
	if err := inf.SetWatchErrorHandlerWithContext(w.watchError); err != nil {
		return err
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.update,
		UpdateFunc: func(_, obj any) { w.update(obj) },
		DeleteFunc: w.delete,
	})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { inf.RunWithContext(runCtx) })
	s.closers = append(s.closers, func() { cancel(); wg.Wait() })

	syncCtx, stop := context.WithTimeout(runCtx, s.opts.SyncTimeout)
	defer stop()
	if !cache.WaitForCacheSync(syncCtx.Done(), reg.HasSynced) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.failed(w.what, fmt.Errorf("not listed within %s (API server unreachable, or no permission to list and watch it); still trying", s.opts.SyncTimeout))
		return nil
	}
	w.mu.Lock()
	seen := w.seen
	w.mu.Unlock()
	if !seen {
		s.failed(w.what, errors.New("does not exist (yet)"))
	}
	return nil
}

type secretWatch struct {
	s     *source
	name  string
	what  string
	parse func(*corev1.Secret) (material, error)

	mu      sync.Mutex
	seen    bool
	lastRV  string
	lastErr time.Time
}

func (w *secretWatch) update(obj any) {
	sec, ok := obj.(*corev1.Secret)
	if !ok || sec.Name != w.name {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = true
	if sec.ResourceVersion != "" && sec.ResourceVersion == w.lastRV {
		return // a re-list of the version already handled
	}
	w.lastRV = sec.ResourceVersion
	what := w.what + " (resourceVersion " + sec.ResourceVersion + ")"
	m, err := w.parse(sec)
	if err != nil {
		w.s.failed(what, err)
		return
	}
	w.s.rotated(m, what)
}

func (w *secretWatch) delete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if sec, ok := obj.(*corev1.Secret); ok && sec.Name != w.name {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastRV = ""
	w.s.failed(w.what, errors.New("was deleted"))
}

// watchError logs why the watch dropped; the informer retries with backoff.
// API errors name the resource and the reason, not Secret data.
func (w *secretWatch) watchError(_ context.Context, _ *cache.Reflector, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.lastErr) < 30*time.Second {
		return
	}
	w.lastErr = time.Now()
	w.s.log.Warn("watch of the credential Secret failed; retrying", "from", w.what, "reason", err.Error())
}
