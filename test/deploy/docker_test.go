package deploy

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
)

// dockerInstruction is one Dockerfile instruction with continuations joined.
type dockerInstruction struct {
	line int
	cmd  string // upper-cased: EXPOSE, VOLUME, ENV, ...
	args string
}

// finalStage returns the instructions after the last FROM: earlier stages'
// EXPOSE, VOLUME and ENV do not reach the image that runs.
func finalStage(t *testing.T, src string) []dockerInstruction {
	t.Helper()
	var all []dockerInstruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		// Comments (and parser directives) are dropped even between
		// continuation lines, as BuildKit does.
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		all = append(all, dockerInstruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	last := -1
	for i, ins := range all {
		if ins.cmd == "FROM" {
			last = i
		}
	}
	if last < 0 {
		t.Fatalf("%s has no FROM", dockerfilePath)
	}
	return all[last+1:]
}

// words splits shell-style words, honouring quotes; enough for Dockerfile
// arguments and README command lines.
func words(s string) []string {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// listArgs reads an instruction's arguments in JSON-array or plain form.
func listArgs(t *testing.T, ins dockerInstruction) []string {
	t.Helper()
	if strings.HasPrefix(ins.args, "[") {
		var list []string
		if err := json.Unmarshal([]byte(ins.args), &list); err != nil {
			t.Fatalf("%s line %d: %s %s: %v", dockerfilePath, ins.line, ins.cmd, ins.args, err)
		}
		return list
	}
	return words(ins.args)
}

type dockerfileFacts struct {
	exposed []int
	volumes []string
	env     map[string]string
}

func readDockerfile(t *testing.T) dockerfileFacts {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot(t), dockerfilePath))
	if err != nil {
		t.Fatalf("the top-level %s is needed to check %s against it: %v", dockerfilePath, dockerREADME, err)
	}
	f := dockerfileFacts{env: map[string]string{}}
	for _, ins := range finalStage(t, string(src)) {
		switch ins.cmd {
		case "EXPOSE":
			for _, p := range listArgs(t, ins) {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					t.Fatalf("%s line %d: EXPOSE %q is not a TCP port number", dockerfilePath, ins.line, p)
				}
				f.exposed = append(f.exposed, n)
			}
		case "VOLUME":
			f.volumes = append(f.volumes, listArgs(t, ins)...)
		case "ENV":
			ws := words(ins.args)
			if len(ws) > 0 && !strings.Contains(ws[0], "=") {
				// Legacy form: ENV KEY value with spaces.
				f.env[ws[0]] = strings.Join(ws[1:], " ")
				continue
			}
			for _, w := range ws {
				k, v, _ := strings.Cut(w, "=")
				f.env[k] = v
			}
		}
	}
	return f
}

// dockerRun is one `docker run` command from the README.
type dockerRun struct {
	text        string
	published   map[int]int // container port -> host port
	mounts      map[string]string
	stopTimeout time.Duration
	// detached marks a long-running server (-d); other runs are one-off
	// commands such as `config check`.
	detached bool
}

var readmeCodeBlock = regexp.MustCompile("(?s)```[a-z]*\n(.*?)```")

// readmeDockerRuns returns the README's server runs (`docker run -d`).
func readmeDockerRuns(t *testing.T) []dockerRun {
	t.Helper()
	md := string(readRepoFile(t, dockerREADME))
	var runs []dockerRun
	for _, block := range readmeCodeBlock.FindAllStringSubmatch(md, -1) {
		joined := strings.ReplaceAll(block[1], "\\\n", " ")
		for _, line := range strings.Split(joined, "\n") {
			ws := words(line)
			if len(ws) < 2 || ws[0] != "docker" || ws[1] != "run" {
				continue
			}
			runs = append(runs, parseDockerRun(t, line, ws[2:]))
		}
	}
	servers := slices.DeleteFunc(runs, func(r dockerRun) bool { return !r.detached })
	if len(servers) == 0 {
		t.Fatalf("%s has no `docker run -d` command in a fenced code block", dockerREADME)
	}
	return servers
}

func parseDockerRun(t *testing.T, text string, args []string) dockerRun {
	t.Helper()
	r := dockerRun{text: strings.Join(strings.Fields(text), " "), published: map[int]int{}, mounts: map[string]string{}}
	for i := 0; i < len(args); i++ {
		flag, val, hasVal := strings.Cut(args[i], "=")
		takeVal := func() string {
			if hasVal {
				return val
			}
			if i+1 >= len(args) {
				t.Fatalf("%s: %s without a value in: %s", dockerREADME, flag, r.text)
			}
			i++
			return args[i]
		}
		switch flag {
		case "-p", "--publish":
			// [ip:]host:container[/proto]
			parts := strings.Split(strings.TrimSuffix(takeVal(), "/tcp"), ":")
			if len(parts) < 2 {
				t.Fatalf("%s: -p %s publishes a random host port; nodes need a fixed one: %s", dockerREADME, strings.Join(parts, ":"), r.text)
			}
			host, err1 := strconv.Atoi(parts[len(parts)-2])
			ctr, err2 := strconv.Atoi(parts[len(parts)-1])
			if err1 != nil || err2 != nil {
				t.Fatalf("%s: cannot read -p %s in: %s", dockerREADME, strings.Join(parts, ":"), r.text)
			}
			r.published[ctr] = host
		case "-v", "--volume":
			src, rest, _ := strings.Cut(takeVal(), ":")
			dst, _, _ := strings.Cut(rest, ":")
			r.mounts[dst] = src
		case "-d", "--detach":
			r.detached = true
		case "--stop-timeout":
			n, err := strconv.Atoi(takeVal())
			if err != nil {
				t.Fatalf("%s: --stop-timeout is not a number of seconds in: %s", dockerREADME, r.text)
			}
			r.stopTimeout = time.Duration(n) * time.Second
		}
	}
	return r
}

func portOf(t *testing.T, listen string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The README's docker run lines must publish what the image serves and
// mount what the image declares as its volume; a port or path changed in one
// place only would leave users with a cache nodes cannot reach or that
// forgets everything on upgrade.
func TestDockerREADMEMatchesDockerfile(t *testing.T) {
	df := readDockerfile(t)
	def := config.Default()
	var upstreamPorts []int
	for _, u := range def.Upstreams {
		upstreamPorts = append(upstreamPorts, portOf(t, u.Listen))
	}
	adminPort := portOf(t, def.Admin.Listen)

	for _, p := range upstreamPorts {
		if !slices.Contains(df.exposed, p) {
			t.Errorf("Dockerfile does not EXPOSE upstream port %d (EXPOSE %v)", p, df.exposed)
		}
	}
	for _, p := range df.exposed {
		if !slices.Contains(upstreamPorts, p) && p != adminPort {
			t.Errorf("Dockerfile EXPOSEs %d, which is neither an upstream port %v nor the admin port %d", p, upstreamPorts, adminPort)
		}
	}
	if len(df.volumes) != 1 {
		t.Fatalf("Dockerfile declares VOLUME %q, want exactly one (the cache)", df.volumes)
	}
	volume := df.volumes[0]
	// A cache written beside the volume would vanish with the container.
	if dir := df.env["MULTIPROXY_DATA_DIR"]; dir != volume {
		t.Errorf("Dockerfile ENV MULTIPROXY_DATA_DIR=%q, want the VOLUME %s", dir, volume)
	}

	for _, run := range readmeDockerRuns(t) {
		for _, p := range upstreamPorts {
			host, ok := run.published[p]
			switch {
			case !ok:
				t.Errorf("does not publish upstream port %d: %s", p, run.text)
			case host != p:
				// hosts.toml on the nodes names the container's ports.
				t.Errorf("publishes container port %d on host port %d, want the same port: %s", p, host, run.text)
			}
		}
		for ctr := range run.published {
			if !slices.Contains(upstreamPorts, ctr) && ctr != adminPort {
				t.Errorf("publishes %d, which the image does not serve: %s", ctr, run.text)
			}
			if !slices.Contains(df.exposed, ctr) {
				t.Errorf("publishes %d, which the Dockerfile does not EXPOSE: %s", ctr, run.text)
			}
		}
		if _, ok := run.mounts[volume]; !ok {
			t.Errorf("mounts nothing at the image's VOLUME %s, so the cache dies with the container: %s", volume, run.text)
		}
		if run.stopTimeout <= def.ShutdownTimeout {
			t.Errorf("--stop-timeout %s does not outlast the %s drain: %s", run.stopTimeout, def.ShutdownTimeout, run.text)
		}
	}
}
