// Package kubeclient turns a kubeconfig path from the configuration into a
// client configuration, so that every package that talks to the
// Kubernetes API reads one the same way.
package kubeclient

import (
	"errors"
	"fmt"
	"io/fs"

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
