package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// pullbrokerBin is the binary TestMain built from this checkout.
var pullbrokerBin string

// TestMain builds cmd/pullbroker once for every test of the package. When the tests themselves run
// with -race (scripts/test.sh does), the binary is built with -race too: a data race inside the
// proxy then shows in its log, and each test fails on it.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pullbroker-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	pullbrokerBin = filepath.Join(dir, "pullbroker")
	if err := buildPullbroker(pullbrokerBin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building pullbroker:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildPullbroker(out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the go command is needed to build the binary under test: %w", err)
	}
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/pullbroker/pullbroker/cmd/pullbroker")
	cmd := exec.Command(goBin, args...)
	cmd.Dir = ".." // the module root, so the build uses this checkout's go.mod
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, b)
	}
	return nil
}
