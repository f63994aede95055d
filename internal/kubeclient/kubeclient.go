// Package kubeclient turns a kubeconfig path from the configuration into a
// client configuration, so that every package that talks to the
// Kubernetes API reads one the same way.
package kubeclient

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig reads the kubeconfig at path, or the in-cluster configuration (the
// Pod's service account) when path is empty. Errors quote neither file
// contents nor tokens.
func RESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given and not running in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) || clientcmd.IsConfigurationInvalid(err) {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		return nil, fmt.Errorf("kubeconfig %s cannot be loaded", path)
	}
	return cfg, nil
}

// serviceAccountNamespace is where a Pod finds its namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Namespace is the namespace of the kubeconfig's current context at path
// ("default" when it names none), or the Pod's own namespace when path is
// empty, for objects a replica keeps in "its" namespace.
func Namespace(path string) (string, error) {
	if path == "" {
		b, err := os.ReadFile(serviceAccountNamespace)
		if err != nil {
			return "", fmt.Errorf("no kubeconfig given and the Pod's namespace is unknown: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	ns, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: path}, &clientcmd.ConfigOverrides{}).Namespace()
	if err != nil {
		return "", fmt.Errorf("kubeconfig %s: no namespace: %w", path, err)
	}
	return ns, nil
}
