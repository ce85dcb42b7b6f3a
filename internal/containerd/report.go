package containerd

import (
	"fmt"
	"io"
	"strings"
)

// WriteText prints the findings for a terminal: location, severity and
// code, the offending line, what it means, and the fix.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, f := range r.Findings {
		loc := f.File
		if f.Line > 0 {
			loc = fmt.Sprintf("%s:%d", f.File, f.Line)
		}
		fmt.Fprintf(&b, "%s: %s [%s]\n", loc, f.Severity, f.Code)
		if f.Text != "" {
			fmt.Fprintf(&b, "  %4d | %s\n", f.Line, f.Text)
		}
		fmt.Fprintf(&b, "  %s\n", f.Message)
		if f.Fix != "" {
			fmt.Fprintf(&b, "  fix: %s\n", f.Fix)
		}
	}
	fmt.Fprintf(&b, "%s: %s, %s, %s\n", r.Path,
		plural(r.Count(Error), "error"), plural(r.Count(Warning), "warning"), plural(r.Count(Info), "note"))
	_, err := io.WriteString(w, b.String())
	return err
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// WriteFileHeader starts one file in a multi-file listing. It is a TOML
// comment, so a listing of a single file can be saved as is.
func WriteFileHeader(w io.Writer, path string) error {
	_, err := fmt.Fprintf(w, "# ==> %s <==\n", path)
	return err
}

// WriteHostsListing prints files as they would be written under dir, each
// after a header naming its path.
func WriteHostsListing(w io.Writer, dir string, files []HostsFile) error {
	for i, f := range files {
		if i > 0 {
			if _, err := io.WriteString(w, "\n"); err != nil {
				return err
			}
		}
		if err := WriteFileHeader(w, f.Path(dir)); err != nil {
			return err
		}
		if _, err := w.Write(f.Content); err != nil {
			return err
		}
	}
	return nil
}
