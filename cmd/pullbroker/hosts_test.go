package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHostsCommand(t *testing.T) {
	dir := t.TempDir()
	stdout, _, err := runCmd(t, "", "hosts", "--proxy", "http://127.0.0.1:30500", "--dir", dir, "--registry", "index.docker.io", "--registry", "ghcr.io")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		filepath.Join(dir, "docker.io", "hosts.toml"),
		filepath.Join(dir, "registry-1.docker.io", "hosts.toml"),
		filepath.Join(dir, "ghcr.io", "hosts.toml"),
	}
	if got := strings.Fields(stdout); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("reported %v, want %v", got, want)
	}
	b, err := os.ReadFile(want[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{`server = "https://registry-1.docker.io"`, `[host."http://127.0.0.1:30500"]`, `dial_timeout = "2s"`} {
		if !strings.Contains(string(b), line) {
			t.Errorf("docker.io/hosts.toml lacks %s:\n%s", line, b)
		}
	}

	stdout, _, err = runCmd(t, "", "hosts", "--proxy", "http://127.0.0.1:30500", "--format", "crio", "--no-fallback")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "prefix = \"quay.io\"\nlocation = \"127.0.0.1:30500/quay.io\"\ninsecure = true\n") {
		t.Errorf("crio output:\n%s", stdout)
	}

	// --dir - prints the files instead of creating a directory named "-".
	t.Chdir(t.TempDir())
	stdout, _, err = runCmd(t, "", "hosts", "--proxy", "http://127.0.0.1:30500", "--dir", "-", "--registry", "ghcr.io")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout, "# ghcr.io/hosts.toml\n") || !strings.Contains(stdout, `[host."http://127.0.0.1:30500"]`) {
		t.Errorf("--dir - printed:\n%s", stdout)
	}
	if _, err := os.Stat("-"); !os.IsNotExist(err) {
		t.Errorf("--dir - created a directory named -: %v", err)
	}

	for name, args := range map[string][]string{
		"no proxy":         {"hosts", "--dir", dir},
		"bad format":       {"hosts", "--proxy", "http://127.0.0.1:30500", "--format", "docker"},
		"unknown registry": {"hosts", "--proxy", "http://127.0.0.1:30500", "--dir", dir, "--registry", "nowhere.example"},
		"bad proxy":        {"hosts", "--proxy", "127.0.0.1:30500", "--dir", dir},
	} {
		if _, _, err := runCmd(t, "", args...); err == nil {
			t.Errorf("%s: succeeded", name)
		}
	}
}
