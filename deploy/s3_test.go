package deploy_test

import (
	"context"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	sigsyaml "sigs.k8s.io/yaml"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestHAStorageReachesBucket opens distribution's S3 driver with the
// storage parameters the ha layouts render and the credentials only in
// the environment, as the Pod gets them from its Secret: the driver must
// find them through the AWS default chain (the parameters have no
// accesskey), store under rootdirectory, and fail without them. Only the
// placeholder bucket and region and the address are swapped for a
// versitygw on loopback.
func TestHAStorageReachesBucket(t *testing.T) {
	s3 := testenv.StartS3(t)
	// Nothing else in the chain may answer: no files, no instance metadata.
	for _, k := range []string{"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	secret := map[string]string{"AWS_ACCESS_KEY_ID": s3.AccessKey, "AWS_SECRET_ACCESS_KEY": s3.SecretKey}

	for _, r := range []rendered{render(t, "overlays/ha"), renderChart(t, haChartCase(t))} {
		t.Run(r.name, func(t *testing.T) {
			proxy := onlyOne(t, "proxy", r.component(t, "proxy"))
			var cfg haConfig
			if err := sigsyaml.Unmarshal([]byte(configFile(t, r, proxy, "config")), &cfg); err != nil {
				t.Fatal(err)
			}
			params := maps.Clone(cfg.Storage.Parameters)
			// The placeholders name AWS; everything else is as rendered.
			for _, k := range []string{"bucket", "region", "regionendpoint", "forcepathstyle"} {
				params[k] = s3.Parameters()[k]
			}
			storage := config.Storage{Driver: cfg.Storage.Driver, Parameters: params}
			root := strings.Trim(params["rootdirectory"].(string), "/")
			path := "/deploy-test/" + strings.ReplaceAll(r.name, "/", "-")
			ctx := context.Background()

			// Without the Secret's variables the chain has nothing.
			for name := range secret {
				t.Setenv(name, "")
			}
			d, _, err := cache.OpenDriver(ctx, storage)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.PutContent(ctx, path, []byte("x")); err == nil || !strings.Contains(err.Error(), "NoCredentialProviders") {
				t.Fatalf("without the Secret's variables: %v, want no credentials found", err)
			}

			for _, e := range proxy.pod.Spec.Containers[0].Env {
				if ref := e.ValueFrom; ref != nil && ref.SecretKeyRef != nil {
					t.Setenv(e.Name, secret[ref.SecretKeyRef.Key])
				}
			}
			d, _, err = cache.OpenDriver(ctx, storage)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.PutContent(ctx, path, []byte(r.name)); err != nil {
				t.Fatalf("store with the credentials from the Pod's environment: %v", err)
			}
			if got, err := d.GetContent(ctx, path); err != nil || string(got) != r.name {
				t.Fatalf("read back %q, %v", got, err)
			}
			found := false
			for _, k := range s3.Keys(t) {
				found = found || k == root+path
			}
			if !found {
				t.Errorf("no object %s in the bucket %v: rootdirectory %q is not the prefix", root+path, s3.Keys(t), root)
			}
		})
	}
}
