package cache

import (
	"context"
	"path"
	"sort"
	"strings"
)

// Repositories lists "registry/repository" for every repository the cache
// holds something for, sorted, in the image-prefix form ("host_5000/app").
func (s *Store) Repositories(ctx context.Context) ([]string, error) {
	registries, err := s.driver.List(ctx, "/repos")
	if isPathNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, reg := range registries {
		if err := s.collectRepos(ctx, reg, path.Base(reg), &out); err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	return out, nil
}

// collectRepos descends dir; a directory with a _links, _tags or _pins child is a
// repository, and may itself contain deeper repositories.
func (s *Store) collectRepos(ctx context.Context, dir, name string, out *[]string) error {
	children, err := s.driver.List(ctx, dir)
	if isPathNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	isRepo := false
	for _, c := range children {
		base := path.Base(c)
		if strings.HasPrefix(base, "_") {
			isRepo = isRepo || base == "_links" || base == "_tags" || base == "_pins"
			continue
		}
		if err := s.collectRepos(ctx, c, name+"/"+base, out); err != nil {
			return err
		}
	}
	if isRepo {
		*out = append(*out, name)
	}
	return nil
}
