package differential

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// conformanceBinary is the OCI distribution-spec conformance suite as
// ci/install-oci-conformance.sh installs it.
const conformanceBinary = "oci-conformance"

// requireConformance finds the suite's binary. CI installs it, so there a
// missing binary fails the test; elsewhere the test skips, saying what to
// install.
func requireConformance(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath(conformanceBinary)
	if err == nil {
		return path
	}
	msg := conformanceBinary + " is not installed: this test runs the OCI distribution-spec conformance suite (run ci/install-oci-conformance.sh)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// summary is the suite's verdict and its counts per status.
type summary struct {
	result string
	counts map[string]int
	output string
}

var (
	resultLine = regexp.MustCompile(`(?m)^OCI Conformance Result: (\S+)`)
	countLine  = regexp.MustCompile(`(?m)^  (Pass|Skip|Disabled|FAIL|Error|Total)\.+: +(\d+)$`)
)

// runConformance runs the suite read-only against registry (host:port,
// plain HTTP) with the corpus as its data. The suite writes its report
// files after printing the summary, and that version's YAML report can
// panic; the printed summary is what is judged.
func runConformance(t *testing.T, bin, registry string, c *ts.Corpus) summary {
	t.Helper()
	dir := t.TempDir()
	env := []string{}
	for _, kv := range os.Environ() {
		// The suite reads its whole configuration from OCI_*; none may
		// leak in from the environment running the test.
		if !strings.HasPrefix(kv, "OCI_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"OCI_REGISTRY="+registry,
		"OCI_TLS=disabled",
		"OCI_REPO1="+c.Repo,
		"OCI_REPO2="+c.Repo+"-other",
		"OCI_RESULTS_DIR="+dir,
		"OCI_LOG=warn",
		// Read only: the suite pulls what was pushed beforehand.
		"OCI_API_PULL=true",
		"OCI_API_PUSH=false",
		"OCI_API_BLOBS_DELETE=false",
		"OCI_API_MANIFESTS_DELETE=false",
		"OCI_API_TAGS_DELETE=false",
		"OCI_API_TAGS_LIST=true",
		"OCI_API_REFERRER=true",
		"OCI_RO_DATA_TAGS="+strings.Join(ociTags(c), " "),
		"OCI_RO_DATA_MANIFESTS="+strings.Join(c.ManifestDigests(), " "),
		"OCI_RO_DATA_BLOBS="+strings.Join(c.BlobDigests(), " "),
		"OCI_RO_DATA_REFERRERS="+strings.Join(c.Subjects, " "),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = env
	// Away from any oci-conformance.yaml in the package directory.
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	s := summary{counts: map[string]int{}, output: out.String()}
	m := resultLine.FindStringSubmatch(s.output)
	if m == nil {
		t.Fatalf("%s printed no summary (%v):\n%s", bin, err, s.output)
	}
	s.result = m[1]
	for _, m := range countLine.FindAllStringSubmatch(s.output, -1) {
		n, _ := strconv.Atoi(m[2])
		s.counts[m[1]] = n
	}
	return s
}

// failedTests lists the tests the suite's log says failed, with the start
// of their error.
var failedLine = regexp.MustCompile(`msg="failed test" name="([^"]+)" error="((?:[^"\\]|\\.){0,100})`)

func (s summary) failed() string {
	var b strings.Builder
	for _, m := range failedLine.FindAllStringSubmatch(s.output, -1) {
		fmt.Fprintf(&b, "\n  %s: %s", strings.TrimPrefix(m[1], "OCI Conformance Test/"), m[2])
	}
	return b.String()
}

// TestConformance runs the OCI conformance suite read-only against
// multiproxy in front of each test profile, and once against the plain
// upstream directly, and requires every test of the multiproxy runs to
// pass. The upstream run is for comparison only: distribution has no
// referrers API, so it fails those tests.
func TestConformance(t *testing.T) {
	bin := requireConformance(t)
	type run struct {
		name string
		summary
	}
	var runs []run
	for _, prof := range ts.Profiles() {
		if prof.Name == "token-cdn" {
			// redirected-api puts a front before a token-cdn registry,
			// so it covers this one's tokens and CDN too, and a run
			// costs the race detector tens of seconds.
			continue
		}
		t.Run(prof.Name, func(t *testing.T) {
			up := prof.Start(t)
			c := up.PushCorpus(t, corpusRepo)
			p := ts.StartProxy(t, slowUpstream(up))
			s := runConformance(t, bin, p.Addr("up"), c)
			runs = append(runs, run{"multiproxy, " + prof.Name, s})
			if s.result != "Pass" || s.counts["FAIL"] != 0 || s.counts["Error"] != 0 || s.counts["Pass"] == 0 {
				t.Errorf("the conformance suite failed against multiproxy:%s\n%s", s.failed(), s.output)
			}
			if !maps.Equal(s.counts, wantCounts) {
				t.Errorf("the conformance suite ran other tests than it does on this corpus against multiproxy: counts %v, want %v (a test skipped passes nothing):\n%s",
					s.counts, wantCounts, s.output)
			}
			if prof.Token {
				// The suite logs in only with a username and password;
				// the token profiles' upstreams are public images, so
				// only the plain one is run directly.
				return
			}
			d := runConformance(t, bin, up.Host, c)
			runs = append(runs, run{"upstream, " + prof.Name, d})
			if d.counts["Pass"] == 0 || d.counts["Skip"] != 0 || d.counts["Total"] != wantCounts["Total"] {
				t.Errorf("the conformance suite ran otherwise against the upstream itself (counts %v), so the runs compare nothing:\n%s", d.counts, d.output)
			}
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%-10s", "")
	for _, r := range runs {
		fmt.Fprintf(&b, " %28s", r.name)
	}
	fmt.Fprintf(&b, "\n%-10s", "Result")
	for _, r := range runs {
		fmt.Fprintf(&b, " %28s", r.result)
	}
	for _, k := range []string{"Pass", "Skip", "Disabled", "FAIL", "Error", "Total"} {
		fmt.Fprintf(&b, "\n%-10s", k)
		for _, r := range runs {
			fmt.Fprintf(&b, " %28d", r.counts[k])
		}
	}
	for _, r := range runs {
		if f := r.failed(); f != "" {
			fmt.Fprintf(&b, "\nfailed against %s:%s", r.name, f)
		}
	}
	table := "OCI distribution-spec conformance suite, read only, on testsupport.PushCorpus:\n" + b.String() + "\n"
	t.Log(table)
	// go test shows a passing test's log only with -v; ci/test names a
	// file here and prints it after the run, so the summaries are in
	// every CI log without the suite running twice.
	if path := os.Getenv(summaryFileEnv); path != "" {
		if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
			t.Errorf("write the summaries for ci/test: %v", err)
		}
	}
}

// summaryFileEnv names the file TestConformance writes its summaries to.
const summaryFileEnv = "TEST_CONFORMANCE_SUMMARY"

// wantCounts is every multiproxy run's summary: every test the read-only
// configuration enables passes, and none is skipped, so a test that
// silently becomes a skip (data it no longer finds, a check it stops
// making) fails the run. The 109 disabled are what the read-only
// configuration turns off: the push, upload, mount and delete tests and
// the data sets the suite would push for them (OCI_API_PUSH=false, the
// *_DELETE=false settings). The numbers are the pinned suite version's
// (ci/install-oci-conformance.sh) on testsupport.PushCorpus: a new
// version or corpus may change them, deliberately, here.
var wantCounts = map[string]int{"Pass": 160, "Skip": 0, "Disabled": 109, "FAIL": 0, "Error": 0, "Total": 269}

// ociTags are the corpus's tags of OCI content. The suite asks for a tag
// with OCI types only in Accept, and a Docker manifest list asked for so is
// answered 400 MANIFEST_INVALID by distribution (it would downgrade the list
// to a schema2 manifest the client does not accept), and so by the cache,
// which answers as its upstream does: the Docker tags are the differential
// suite's to compare, not the OCI suite's.
func ociTags(c *ts.Corpus) []string {
	var out []string
	for _, m := range c.Manifests {
		if m.Tag != "" && strings.HasPrefix(m.MediaType, "application/vnd.oci.") {
			out = append(out, m.Tag)
		}
	}
	slices.Sort(out)
	return out
}
