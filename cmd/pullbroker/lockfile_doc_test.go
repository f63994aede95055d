package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
)

// TestLockFileDocumented: the lock file README.md and config.example.yaml
// show is one a locked pin rule reads.
func TestLockFileDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## Lock files")
	_, block, ok2 := strings.Cut(section, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no yaml example under \"## Lock files\"")
	}
	example, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var commented []string
	for _, l := range strings.Split(string(example), "\n") {
		if rest, ok := strings.CutPrefix(l, "    #   "); ok {
			commented = append(commented, rest)
		}
	}
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	for name, doc := range map[string]string{"README.md": block, "config.example.yaml": strings.Join(commented, "\n")} {
		file := filepath.Join(t.TempDir(), "pullbroker.lock")
		if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		pins, err := tags.ReadLockFile(cfg, file)
		if err != nil || len(pins) != 2 || pins["docker.io/library/nginx:1.27"] == "" {
			t.Errorf("%s's lock file example: %v, %v", name, pins, err)
		}
	}
}
