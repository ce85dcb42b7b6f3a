package testsupport

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/serve"
)

// childConfigEnv names the config file of a test binary started as a
// multiproxy server process by StartChild.
const childConfigEnv = "MULTIPROXY_TEST_CHILD_CONFIG"

// RunChildIfAsked makes the test binary a multiproxy server process when
// StartChild started it, so that a test can kill -9 a real process without
// building the binary. Call it first in TestMain: in a child it serves the
// config file StartChild named (logging at its log_level to stderr) and
// exits; otherwise it returns at once.
//
//	func TestMain(m *testing.M) {
//		testsupport.RunChildIfAsked()
//		os.Exit(m.Run())
//	}
func RunChildIfAsked() {
	file := os.Getenv(childConfigEnv)
	if file == "" {
		return
	}
	cfg, err := config.Load(config.LoadOptions{File: file})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := serve.Run(context.Background(), cfg, log, serve.Hooks{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Child is a multiproxy server process: the test binary, in the mode
// RunChildIfAsked gives it.
type Child struct {
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *SyncBuffer
}

// StartChild starts the test binary as multiproxy serving cfgFile and waits
// until addr (one of its listeners) accepts connections. The child is
// killed, if still running, when the test ends.
func StartChild(t testing.TB, cfgFile, addr string) *Child {
	t.Helper()
	c := &Child{cmd: exec.Command(os.Args[0], "-test.run=^$"), exited: make(chan struct{}), logs: &SyncBuffer{}}
	c.cmd.Env = append(os.Environ(), childConfigEnv+"="+cfgFile)
	c.cmd.Stderr = c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("testsupport: start child multiproxy: %v", err)
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() { c.Kill(t) })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return c
		}
		select {
		case <-c.exited:
			t.Fatalf("testsupport: child multiproxy exited at start:\n%s", c.logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("testsupport: child multiproxy did not listen on %s:\n%s", addr, c.logs)
	return nil
}

// Kill sends SIGKILL (nothing in the child cleans up) and waits for the
// process to end. It may be called more than once.
func (c *Child) Kill(t testing.TB) {
	t.Helper()
	_ = c.cmd.Process.Kill()
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		t.Errorf("testsupport: child %d did not exit after SIGKILL", c.cmd.Process.Pid)
	}
}

// Signal sends sig to the process: SIGSTOP and SIGCONT pause and resume
// it as a kernel, a debugger or a frozen container would.
func (c *Child) Signal(sig os.Signal) error { return c.cmd.Process.Signal(sig) }

// Freeze sends SIGSTOP: the process holds its connections and its Redis
// leases but neither answers nor renews anything, as a hung replica does.
// It is resumed (SIGCONT) when the test ends, so its cleanup can stop it.
func (c *Child) Freeze(t testing.TB) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("testsupport: freeze child %d: %v", c.cmd.Process.Pid, err)
	}
	t.Cleanup(func() { _ = c.cmd.Process.Signal(syscall.SIGCONT) })
}

// Exited is closed once the process has ended.
func (c *Child) Exited() <-chan struct{} { return c.exited }

// Logs is what the child logged so far.
func (c *Child) Logs() string { return c.logs.String() }
