package admin

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/multiproxy/multiproxy/internal/health"
)

const (
	rulesDir  = "../../deploy/prometheus"
	rulesFile = "multiproxy-rules.yml"
	rulesTest = "multiproxy-rules.test.yml"
)

// alertRules reads the alerting rules file: each alert's name and expression.
func alertRules(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(rulesDir + "/" + rulesFile)
	if err != nil {
		t.Fatalf("read rules: %v", err)
	}
	var doc struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert  string            `yaml:"alert"`
				Record string            `yaml:"record"`
				Expr   string            `yaml:"expr"`
				Labels map[string]string `yaml:"labels"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s is not YAML: %v", rulesFile, err)
	}
	out := map[string]string{}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule without an alert name (recording rule %q?)", g.Name, r.Record)
				continue
			}
			if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, sev)
			}
			out[r.Alert] = r.Expr
		}
	}
	return out
}

// stateMatcher finds the values a rule matches the state label against.
var stateMatcher = regexp.MustCompile(`state=~?"([^"]*)"`)

func TestAlertRulesQueryOnlyExportedMetrics(t *testing.T) {
	rules := alertRules(t)
	exported := selectable(everyHookTouched(t))
	for alert, expr := range rules {
		if err := balanced(expr); err != "" {
			t.Errorf("%s: %s in %q", alert, err, expr)
		}
		names := metricRef.FindAllString(expr, -1)
		if len(names) == 0 {
			t.Errorf("%s queries no multiproxy metric: %q", alert, expr)
		}
		for _, name := range names {
			if !exported[name] {
				t.Errorf("%s queries %s, which multiproxy does not export", alert, name)
			}
		}
		for _, m := range stateMatcher.FindAllStringSubmatch(expr, -1) {
			for _, s := range strings.Split(m[1], "|") {
				if !slices.Contains(health.States, health.State(s)) {
					t.Errorf("%s matches state %q, which is not a health state (%v)", alert, s, health.States)
				}
			}
		}
	}
	// What the issue asks the rules to catch.
	for _, need := range []string{
		"multiproxy_disk_free_bytes", "multiproxy_disk_reserved_bytes", "multiproxy_storage_errors_total",
		"multiproxy_fill_uncached_total", "multiproxy_upstream_state",
	} {
		found := false
		for _, expr := range rules {
			found = found || strings.Contains(expr, need)
		}
		if !found {
			t.Errorf("no alert on %s", need)
		}
	}
}

// promtool checks the rules' PromQL and templates, and runs their unit
// tests. CI installs it (ci/install-prometheus.sh); elsewhere this skips.
func TestAlertRulesPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed: as root on Debian, run ci/install-prometheus.sh (apt-get install prometheus)")
	}
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", rulesTest}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = rulesDir
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
		} else {
			t.Logf("promtool %s: %s", strings.Join(args, " "), strings.TrimSpace(out.String()))
		}
	}
}
