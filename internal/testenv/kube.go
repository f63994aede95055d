package testenv

import (
	"path/filepath"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// NewAPIServerEnvironment is an envtest control plane of the etcd and
// kube-apiserver in KubeAssets, set up to run inside a loopback-only
// network namespace: there the API server finds no address of its own to
// advertise, and has no use for the kubernetes Service's endpoint
// reconciler. Start it with Start and stop it with Stop.
func NewAPIServerEnvironment(t testing.TB, crds ...*apiextensionsv1.CustomResourceDefinition) *envtest.Environment {
	t.Helper()
	env := &envtest.Environment{BinaryAssetsDirectory: KubeAssets(t), CRDs: crds, ErrorIfCRDPathMissing: true}
	env.ControlPlane.GetAPIServer().Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none")
	return env
}

// StartAPIServer starts a control plane for the test, stopped when it
// ends, and returns a config with cluster-admin rights.
func StartAPIServer(t testing.TB, crds ...*apiextensionsv1.CustomResourceDefinition) *rest.Config {
	t.Helper()
	env := NewAPIServerEnvironment(t, crds...)
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting etcd and kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stopping the API server: %v", err)
		}
	})
	return cfg
}

// KubeconfigFile writes cfg as a kubeconfig file, for code under test
// that takes a kubeconfig path.
func KubeconfigFile(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
	}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
