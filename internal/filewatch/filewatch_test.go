package filewatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// parseNumber accepts a decimal number, as a stand-in for any parsed file.
func parseNumber(b []byte) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, errors.New("not a number")
	}
	return n, nil
}

type events struct {
	reloads  []int
	errors   []string
	recovers int
}

func (e *events) options(interval time.Duration) Options[int] {
	return Options[int]{
		Interval:  interval,
		OnReload:  func(n int) { e.reloads = append(e.reloads, n) },
		OnError:   func(err error) { e.errors = append(e.errors, err.Error()) },
		OnRecover: func() { e.recovers++ },
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func expect(t *testing.T, v *Value[int], want int, when string) {
	t.Helper()
	if got := v.Get(); got != want {
		t.Fatalf("%s: Get = %d, want %d", when, got, want)
	}
}

// secretVolume lays out a directory the way the kubelet's atomic writer
// does for a Secret or ConfigMap volume:
//
//	dir/key                 -> ..data/key
//	dir/..data              -> ..2026_12_06_20_00_00.000000001
//	dir/..2026_…_000000001/key
//
// and publishes a new version the same way: a new timestamped directory, a
// "..data_tmp" symlink to it renamed over "..data" (atomic), then the old
// directory removed.
type secretVolume struct {
	t       *testing.T
	dir     string
	version int
	current string
}

func newSecretVolume(t *testing.T, key, content string) *secretVolume {
	s := &secretVolume{t: t, dir: t.TempDir()}
	s.publish(key, content)
	if err := os.Symlink(filepath.Join("..data", key), filepath.Join(s.dir, key)); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *secretVolume) publish(key, content string) {
	s.t.Helper()
	s.version++
	ts := fmt.Sprintf("..2026_12_06_20_00_00.%09d", s.version)
	if err := os.Mkdir(filepath.Join(s.dir, ts), 0o755); err != nil {
		s.t.Fatal(err)
	}
	write(s.t, filepath.Join(s.dir, ts, key), content)
	tmp := filepath.Join(s.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "..data")); err != nil {
		s.t.Fatal(err)
	}
	if s.current != "" {
		if err := os.RemoveAll(filepath.Join(s.dir, s.current)); err != nil {
			s.t.Fatal(err)
		}
	}
	s.current = ts
}

func TestSecretVolumeSymlinkSwap(t *testing.T) {
	vol := newSecretVolume(t, "number", "1")
	var ev events
	v, err := New(filepath.Join(vol.dir, "number"), parseNumber, ev.options(-1))
	if err != nil {
		t.Fatal(err)
	}
	expect(t, v, 1, "at start")

	vol.publish("number", "2")
	expect(t, v, 2, "after the ..data swap")
	// The same size and content length as before: only the content tells.
	vol.publish("number", "3")
	expect(t, v, 3, "after a second swap")

	vol.publish("number", "not a number")
	expect(t, v, 3, "after a swap to unparsable content")
	vol.publish("number", "4")
	expect(t, v, 4, "after a swap to good content")

	if fmt.Sprint(ev.reloads) != "[2 3 4]" || len(ev.errors) != 1 {
		t.Fatalf("reloads %v, errors %q", ev.reloads, ev.errors)
	}
}

func TestOverwriteInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "number")
	write(t, path, "10")
	var ev events
	v, err := New(path, parseNumber, ev.options(-1))
	if err != nil {
		t.Fatal(err)
	}
	// Rewrites of the same size in quick succession: a modification time
	// of the same clock tick must not hide them.
	for _, n := range []int{11, 12, 13} {
		write(t, path, strconv.Itoa(n))
		expect(t, v, n, "after an overwrite")
	}
	// By rename over the file.
	tmp := path + ".new"
	write(t, tmp, "14")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	expect(t, v, 14, "after a rename over the file")
	// Touched with the same content: nothing to reload.
	write(t, path, "14")
	expect(t, v, 14, "after a rewrite with the same content")
	if fmt.Sprint(ev.reloads) != "[11 12 13 14]" {
		t.Fatalf("reloads %v, want [11 12 13 14]", ev.reloads)
	}
}

func TestFailureKeepsLastGoodValue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "number")
	write(t, path, "1")
	var ev events
	v, err := New(path, parseNumber, ev.options(-1))
	if err != nil {
		t.Fatal(err)
	}

	write(t, path, "garbage")
	for range 3 {
		expect(t, v, 1, "with unparsable content")
	}
	if err := v.Check(); err == nil || err.Error() != "not a number" {
		t.Fatalf("Check = %v, want the parse error", err)
	}
	if len(ev.errors) != 1 {
		t.Fatalf("errors %q: one failure must be reported once", ev.errors)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	expect(t, v, 1, "with the file removed")
	expect(t, v, 1, "with the file still removed")
	if len(ev.errors) != 2 || !strings.Contains(ev.errors[1], path) {
		t.Fatalf("errors %q: want a second, naming the file", ev.errors)
	}

	// Put back as it was: nothing new to load, but the failure is over.
	write(t, path, "1")
	expect(t, v, 1, "with the file back")
	if ev.recovers != 1 || len(ev.reloads) != 0 || v.Check() != nil {
		t.Fatalf("recovers %d reloads %v check %v", ev.recovers, ev.reloads, v.Check())
	}
}

func TestNewRefusesUnusableFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(filepath.Join(dir, "missing"), parseNumber, Options[int]{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	write(t, filepath.Join(dir, "bad"), "x")
	if _, err := New(filepath.Join(dir, "bad"), parseNumber, Options[int]{}); err == nil {
		t.Error("unparsable file accepted")
	}
}

// TestInterval: within the interval Get does not look at the files; Check
// looks at once.
func TestInterval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "number")
	write(t, path, "1")
	v, err := New(path, parseNumber, Options[int]{Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	write(t, path, "2")
	expect(t, v, 1, "within the interval")
	if err := v.Check(); err != nil {
		t.Fatal(err)
	}
	expect(t, v, 2, "after Check")
}

// TestSet: files that belong together load only together.
func TestSet(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write(t, a, "1")
	write(t, b, "1")
	same := func(contents [][]byte) (string, error) {
		if string(contents[0]) != string(contents[1]) {
			return "", errors.New("the files differ")
		}
		return string(contents[0]), nil
	}
	v, err := NewSet([]string{a, b}, same, Options[string]{Interval: -1})
	if err != nil {
		t.Fatal(err)
	}
	write(t, a, "2")
	if got := v.Get(); got != "1" {
		t.Fatalf("half-way: %q, want the previous 1", got)
	}
	write(t, b, "2")
	if got := v.Get(); got != "2" {
		t.Fatalf("whole again: %q, want 2", got)
	}
}
