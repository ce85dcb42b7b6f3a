// Package house checks the promises the README's design section makes
// about the code's shape: which of our packages each package may import.
package house

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/multiproxy/multiproxy/"

// allowed reads the README's package table: package (or packages) ->
// the packages of ours it may import; nil means any.
func allowed(t *testing.T, root string) map[string][]string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	code := regexp.MustCompile("`([^`]+)`")
	rules := map[string][]string{}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(readme))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "| package | job | imports of ours |") {
			in = true
			continue
		}
		if !in || strings.HasPrefix(line, "|---") {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			if len(rules) > 0 {
				break
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 3 {
			t.Fatalf("README package table row %q: want 3 cells", line)
		}
		var may []string
		switch imports := strings.TrimSpace(cells[2]); imports {
		case "any":
			may = nil
		case "none":
			may = []string{}
		default:
			for _, p := range strings.Split(imports, ",") {
				p, _, _ = strings.Cut(strings.TrimSpace(p), " ")
				may = append(may, "internal/"+p)
			}
		}
		for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
			rules[m[1]] = may
		}
	}
	if len(rules) == 0 {
		t.Fatal("no package table in the README's design section")
	}
	return rules
}

// TestImportsAsTheREADMESays: every package of ours is in the README's
// table, and imports only what its row allows.
func TestImportsAsTheREADMESays(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	rules := allowed(t, root)
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./internal/...", "./cmd/...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module)
		may, ok := rules[pkg]
		if !ok {
			// A subpackage (warm/progress) goes by its parent's row.
			for p, r := range rules {
				if strings.HasPrefix(pkg, p+"/") {
					may, ok = r, true
				}
			}
		}
		if !ok {
			t.Errorf("%s is not in the README's package table", pkg)
			continue
		}
		if may == nil {
			continue
		}
		for _, imp := range fields[1:] {
			ours, found := strings.CutPrefix(imp, module)
			if !found || strings.HasPrefix(ours, pkg+"/") || strings.HasPrefix(pkg, ours+"/") {
				continue
			}
			if !slices.Contains(may, ours) {
				t.Errorf("%s imports %s, which the README's table does not allow", pkg, ours)
			}
		}
	}
}

// TestProductBinaryLinksNoTestClient: go-containerregistry is a test
// client only; the product binary does not link it.
func TestProductBinaryLinksNoTestClient(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./cmd/multiproxy")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if bytes.Contains(out, []byte("go-containerregistry")) {
		t.Error("cmd/multiproxy links go-containerregistry")
	}
}

// TestNoLongFiles: no non-test Go file is over 600 lines, so that each
// file can be read as one job.
func TestNoLongFiles(t *testing.T) {
	err := filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != "../.." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if n := bytes.Count(b, []byte("\n")); n > 600 {
			t.Errorf("%s has %d lines; split it by job", strings.TrimPrefix(path, "../../"), n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
