package mirror_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/mirror"
)

func TestSyncPlainLinesAndPlatformError(t *testing.T) {
	up := fakeregistry.New(t)
	one, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	up.Push("team/one", "v1", one)
	up.PushIndex("team/multi", "v1", fakeregistry.RandomIndex(t, types.OCIImageIndex,
		v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}))

	p := newProxy(t, up)
	list := mirror.ImageList{Images: []mirror.Entry{
		{Image: upstreamName + "/team/one:v1"},
		{Image: upstreamName + "/team/multi:v1", Platforms: []mirror.Platform{"linux/s390x"}},
	}}
	var out bytes.Buffer
	if _, err := mirror.Sync(t.Context(), p.cfg, p.handler.InProcess(), p.tags, list, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || strings.Contains(out.String(), "\r") {
		t.Fatalf("not a terminal: want one plain line per image, got %q", out.String())
	}
	if !strings.HasPrefix(lines[0], "ok   ") || !strings.Contains(lines[0], "(1 blob, ") {
		t.Errorf("line %q, want ok and \"1 blob\"", lines[0])
	}
	want := "no manifest in the index matches the requested platforms (linux/s390x); the index has linux/amd64, linux/arm64"
	if !strings.HasPrefix(lines[1], "FAIL ") || !strings.Contains(lines[1], want) {
		t.Errorf("line %q, want FAIL with %q", lines[1], want)
	}
}

// On a terminal the progress line shows bytes done and total and the rate
// while a large layer is read.
func TestSyncProgressOnTerminal(t *testing.T) {
	master, tty := openPTY(t)
	up := fakeregistry.New(t)
	big, err := random.Image(4<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	up.Push("team/big", "v1", big)
	p := newProxy(t, up)

	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(master)
		got <- string(b)
	}()
	list := mirror.ImageList{Images: []mirror.Entry{{Image: upstreamName + "/team/big:v1"}}}
	_, err = mirror.Sync(t.Context(), p.cfg, p.handler.InProcess(), p.tags, list, tty)
	tty.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := <-got
	layers, _ := big.Layers()
	size, _ := layers[0].Size()
	done := fmt.Sprintf("[1/1] %s/team/big:v1: 1/1 blob, ", upstreamName)
	if !strings.Contains(out, "\r\x1b[K[1/1] ") || !strings.Contains(out, done) || !strings.Contains(out, "/s") {
		t.Errorf("terminal output %q lacks a progress line like %q… with a rate", out, done)
	}
	if !strings.Contains(out, " / "+humanSize(size)) {
		t.Errorf("terminal output %q lacks the total %s", out, humanSize(size))
	}
}

func humanSize(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// openPTY opens a pseudo-terminal pair: what is written to tty is read
// from master.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Raw output: no \n to \r\n translation.
	if tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS); err == nil {
		tio.Oflag &^= unix.OPOST
		_ = unix.IoctlSetTermios(int(tty.Fd()), unix.TCSETS, tio)
	}
	return master, tty
}
