package cache

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"

	// The drivers pullbroker ships with register themselves with the factory.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/gcs"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"

	"github.com/pullbroker/pullbroker/config"
)

// OpenDriver creates the storage driver that cfg names, with the same
// parameters distribution's own configuration takes. localRoot is the
// directory behind a filesystem driver, empty for any other.
func OpenDriver(ctx context.Context, cfg config.Storage) (driver storagedriver.StorageDriver, localRoot string, err error) {
	params := cfg.Parameters
	switch cfg.Driver {
	case "gcs":
		params = gcsParameters(params)
	case "filesystem":
		root, _ := params["rootdirectory"].(string)
		if root == "" {
			return nil, "", fmt.Errorf("storage.parameters.rootdirectory: must be set for the filesystem driver")
		}
		abs, err := filepath.Abs(root)
		if err != nil {
			return nil, "", fmt.Errorf("storage.parameters.rootdirectory: %w", err)
		}
		params = map[string]any{}
		for k, v := range cfg.Parameters {
			params[k] = v
		}
		params["rootdirectory"] = abs
		localRoot = abs
	}
	driver, err = factory.Create(ctx, cfg.Driver, params)
	if err != nil {
		return nil, "", fmt.Errorf("storage.driver %q: %w", cfg.Driver, err)
	}
	return driver, localRoot, nil
}

// gcsParameters hands the gcs driver inline credentials as the YAML
// decoder of distribution's own configuration gives them, a
// map[interface{}]interface{}: the driver refuses any other map, and
// pullbroker's configuration decodes maps with string keys.
func gcsParameters(params map[string]any) map[string]any {
	creds, ok := params["credentials"].(map[string]any)
	if !ok {
		return params
	}
	out := maps.Clone(params)
	fields := make(map[any]any, len(creds))
	for k, v := range creds {
		fields[k] = v
	}
	out["credentials"] = fields
	return out
}
