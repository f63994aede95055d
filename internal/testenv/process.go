package testenv

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// How much of a server's log a failed test prints: the end is where the cause usually is.
const logTailBytes = 16 << 10

// KillWithParent makes the kernel kill cmd's process if the test binary dies without running its
// cleanups (a -timeout panic), so that no server a test started outlives the run. Call it before
// cmd.Start; it has no effect outside Linux.
func KillWithParent(cmd *exec.Cmd) { killWithParent(cmd) }

// Process is a server started for one test. Its output goes to a file rather than the test's
// output, and the end of it is printed only when the test fails.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has exited
	err     error         // Wait's result, valid after done
}

// startAttempts bounds startOnFreePort: a port taken between FreePort and the server's bind makes
// the server exit, and another port is tried.
const startAttempts = 3

// startOnFreePort starts the server name on a free 127.0.0.1 port and waits until answers(addr)
// reports it serving; command builds its command line for the port. It returns the process and
// its address, 127.0.0.1:PORT.
func startOnFreePort(t testing.TB, name string, command func(port int) *exec.Cmd, answers func(addr string) bool) (*Process, string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		port := FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p := StartProcess(t, name, command(port))
		err := p.WaitReady(30*time.Second, func() bool { return answers(addr) })
		if err == nil {
			return p, addr
		}
		if !p.Exited() || attempt == startAttempts {
			t.Fatalf("%s on %s: %v\n%s", name, addr, err, p.LogTail())
		}
	}
}

// StartProcess starts cmd and registers with t.Cleanup a SIGTERM (then a kill) and, when the
// test failed, a print of the end of its log.
func StartProcess(t testing.TB, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{name: name, cmd: cmd, logPath: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Terminate(10 * time.Second)
		if t.Failed() {
			t.Logf("%s log (%s):\n%s", name, p.logPath, p.LogTail())
		}
	})
	return p
}

// Exited reports whether the process has already ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit error (nil for status 0), valid once Done is closed.
func (p *Process) Err() error { return p.err }

// Pid is the process's id, for what only /proc tells (its peak memory).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill kills the process and waits for it to end.
func (p *Process) Kill() {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Terminate sends SIGTERM and returns the exit error; a process still running after timeout is
// killed, and that is an error too.
func (p *Process) Terminate(timeout time.Duration) error {
	if !p.Exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s still running %v after SIGTERM; killed", p.name, timeout)
	}
}

// Log returns the whole log so far.
func (p *Process) Log() (string, error) {
	b, err := os.ReadFile(p.logPath)
	return string(b), err
}

// LogPath is the file the process's output goes to.
func (p *Process) LogPath() string { return p.logPath }

// LogTail returns the end of the log, where the cause of a failure usually is.
func (p *Process) LogTail() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > logTailBytes {
		_, _ = f.Seek(-logTailBytes, io.SeekEnd)
	}
	tail, _ := io.ReadAll(f)
	return string(tail)
}

// WaitReady polls ready until it reports true, the process exits, or the timeout passes.
func (p *Process) WaitReady(timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if ready() {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited before it was ready: %v", p.name, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v", p.name, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runTool runs a command-line tool to completion and returns its stdout with surrounding white
// space trimmed. The error carries the command line and stderr, so a failure explains itself.
func runTool(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := strings.TrimSpace(stdout.String())
	if err != nil {
		return out, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// mustRun is runTool for commands that must succeed.
func mustRun(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	out, err := runTool(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// withEnv returns cmd with extra environment variables on top of the test's own.
func withEnv(cmd *exec.Cmd, env ...string) *exec.Cmd {
	cmd.Env = append(os.Environ(), env...)
	return cmd
}
