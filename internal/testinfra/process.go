package testinfra

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// process is a server this package started: redis-server, redis-sentinel
// or versitygw.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startProcess runs bin with args, its output to out. env nil inherits
// this process's environment.
func startProcess(bin string, args, env []string, out io.Writer) (*process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL, as a crash or an OOM kill would, and waits for the
// process to be gone.
func (p *process) kill() error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", p.cmd.Path, p.pid(), err)
	}
	<-p.exited
	return nil
}

// binAndAddr fills in a server's options: bin, or name found in PATH, and
// addr, or a free 127.0.0.1 address.
func binAndAddr(bin, name, addr string) (string, string, error) {
	var err error
	if bin == "" {
		if bin, err = exec.LookPath(name); err != nil {
			return "", "", fmt.Errorf("%s: %w", name, err)
		}
	}
	if addr == "" {
		if addr, err = PickAddr(); err != nil {
			return "", "", fmt.Errorf("%s address: %w", name, err)
		}
	}
	return bin, addr, nil
}

// waitReady polls ready every interval until it returns nil, the process
// exits or timeout passes; the error then names the last answer.
func (p *process) waitReady(timeout, interval time.Duration, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if !p.alive() {
			return fmt.Errorf("exited at start (%v)", p.cmd.ProcessState)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v (last: %w)", timeout, err)
		}
		time.Sleep(interval)
	}
}

// SyncBuffer is a bytes.Buffer that a server may write its log to while
// its owner reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// output is where a server's output goes: its owner's log, if any, and buf.
func output(log io.Writer, buf *SyncBuffer) io.Writer {
	if log == nil {
		return buf
	}
	return io.MultiWriter(log, buf)
}
