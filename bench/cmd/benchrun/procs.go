package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a server process the harness started. Every proc is registered so
// that an interrupted run still stops exactly the processes it started.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once
}

var (
	procsMu sync.Mutex
	procs   []*proc
	// stops are the other servers' stops (internal/testinfra's), which
	// stopAll runs too.
	stops []func()
)

// atStopAll registers stop to run in stopAll.
func atStopAll(stop func()) {
	procsMu.Lock()
	stops = append(stops, stop)
	procsMu.Unlock()
}

// startProc runs bin with args in its own process group, output to
// logDir/name.log. env replaces the environment entirely.
func startProc(name, logDir string, env []string, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(logDir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = env
	// Own process group: nginx's workers are stopped with their master.
	// Pdeathsig: a harness killed with SIGKILL takes its servers with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, then SIGKILL to the process group after 10 s.
func (p *proc) stop() {
	p.once.Do(func() {
		if !p.alive() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
			<-p.exited
		}
	})
	// A process group may outlive its leader (nginx workers): end it too.
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
}

// kill9 kills p's process group with SIGKILL, as a crashed or OOM-killed
// server dies (no shutdown path runs), and waits for it to be gone.
func (p *proc) kill9() error {
	if err := syscall.Kill(-p.pid(), syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %s (pid %d): %w", p.name, p.pid(), err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) still running 10 s after SIGKILL", p.name, p.pid())
	}
}

// stopAll stops every process this harness started, in parallel.
func stopAll() {
	procsMu.Lock()
	list := append([]*proc(nil), procs...)
	others := stops
	stops = nil
	procsMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Go(p.stop)
	}
	for _, stop := range others {
		wg.Go(stop)
	}
	wg.Wait()
}

// waitHTTP polls url until it answers with status want, the process exits,
// or timeout passes.
func waitHTTP(p *proc, url string, want int, timeout time.Duration) error {
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p != nil && !p.alive() {
			return fmt.Errorf("%s exited during start (see its log)", p.name)
		}
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return nil
			}
			last = fmt.Errorf("status %d", resp.StatusCode)
		} else {
			last = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %v", url, timeout, last)
}

// freePort reserves nothing: it finds a port free now. Good enough on a
// machine where only this harness picks ports.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freePorts(n int) ([]int, error) {
	// Hold all listeners until every port is known, so the n are distinct.
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// rssKiB is VmRSS of pid.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(rest)
			if len(fs) == 0 {
				break
			}
			return strconv.ParseInt(fs[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// rssMiB sums VmRSS over pids.
func rssMiB(pids []int) (float64, error) {
	var sum int64
	for _, p := range pids {
		k, err := rssKiB(p)
		if err != nil {
			return 0, err
		}
		sum += k
	}
	return float64(sum) / 1024, nil
}

// statFields returns /proc/pid/stat fields from field 3 (state) on: the
// command name in parentheses may hold spaces.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	return strings.Fields(string(b[i+1:])), nil
}

var clkTck = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}()

// cpuSeconds is utime+stime of pids (all their threads), in seconds.
func cpuSeconds(pids []int) (float64, error) {
	var ticks int64
	for _, p := range pids {
		fs, err := statFields(p)
		if err != nil {
			return 0, err
		}
		if len(fs) < 13 {
			return 0, fmt.Errorf("short stat for pid %d", p)
		}
		// Fields 14 and 15 of stat(5); fs[0] is field 3.
		u, err1 := strconv.ParseInt(fs[11], 10, 64)
		s, err2 := strconv.ParseInt(fs[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("bad stat for pid %d", p)
		}
		ticks += u + s
	}
	return float64(ticks) / clkTck, nil
}

// withChildren returns pid and its direct children (nginx's workers).
func withChildren(pid int) []int {
	out := []int{pid}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil || c == pid {
			continue
		}
		fs, err := statFields(c)
		if err != nil || len(fs) < 2 {
			continue
		}
		if pp, _ := strconv.Atoi(fs[1]); pp == pid {
			out = append(out, c)
		}
	}
	return out
}

// cleanEnv is the harness's environment without variables that would
// reconfigure the servers behind our back (REGISTRY_*, MULTIPROXY_*, proxies).
func cleanEnv(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		ku := strings.ToUpper(k)
		if strings.HasPrefix(ku, "REGISTRY_") || strings.HasPrefix(ku, "MULTIPROXY_") ||
			strings.HasPrefix(ku, "OTEL_") || ku == "HTTP_PROXY" || ku == "HTTPS_PROXY" ||
			ku == "ALL_PROXY" || ku == "NO_PROXY" || ku == "GODEBUG" || ku == "GOMAXPROCS" || ku == "GOGC" {
			continue
		}
		out = append(out, kv)
	}
	return append(out, extra...)
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
