package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// row is one line of the table. Values are medians over repetitions.
type row struct {
	Key    string   `json:"key"`
	Metric string   `json:"metric"`
	Unit   string   `json:"unit"`
	MP     *float64 `json:"multiproxy"`
	Ref    *float64 `json:"reference"`
	// MPText, RefText and BaseText replace the value in the table: a cap
	// the reference hit, a failure ("FAIL"), a range.
	MPText   string `json:"multiproxy_text,omitempty"`
	RefText  string `json:"reference_text,omitempty"`
	BaseText string `json:"baseline_text,omitempty"`
	// Ratio is multiproxy / reference.
	Ratio *float64 `json:"ratio_mp_ref"`
	// BaseName is the ceiling or baseline ("nginx", "direct").
	BaseName string   `json:"baseline_name,omitempty"`
	Base     *float64 `json:"baseline,omitempty"`
	// MPvsBase and RefvsBase are speeds relative to the baseline: for rates
	// value/baseline, for times baseline/value (1.0 = as fast).
	MPvsBase  *float64              `json:"mp_vs_baseline,omitempty"`
	RefvsBase *float64              `json:"ref_vs_baseline,omitempty"`
	Samples   map[string][]*float64 `json:"samples,omitempty"`
	Note      string                `json:"note,omitempty"`
	isTime    bool
	series    series
}

// series holds one value per system per repetition, NaN where a
// repetition failed, so that values of one repetition can be paired.
type series map[string][]float64

func (s series) put(sys string, rep int, v float64) {
	for len(s[sys]) <= rep {
		s[sys] = append(s[sys], math.NaN())
	}
	s[sys][rep] = v
}

func (s series) valid(sys string) []float64 {
	var out []float64
	for _, v := range s[sys] {
		if !math.IsNaN(v) {
			out = append(out, v)
		}
	}
	return out
}

// paired is the median over repetitions of f(a's value, b's value), taken
// only where both were measured in that repetition. Measured back to back,
// the pair shares the machine's mood of the moment, which a ratio of
// medians over the whole run does not.
func (s series) paired(a, b string, f func(x, y float64) float64) *float64 {
	var rs []float64
	for i := 0; i < len(s[a]) && i < len(s[b]); i++ {
		x, y := s[a][i], s[b][i]
		if math.IsNaN(x) || math.IsNaN(y) || y == 0 || x == 0 {
			continue
		}
		rs = append(rs, f(x, y))
	}
	return median(rs)
}

func (s series) samples() map[string][]*float64 {
	out := map[string][]*float64{}
	for k, vs := range s {
		for _, v := range vs {
			if math.IsNaN(v) {
				out[k] = append(out[k], nil)
			} else {
				out[k] = append(out[k], &v)
			}
		}
	}
	return out
}

type goal struct {
	Goal   string `json:"goal"`
	Status string `json:"status"` // PASS, FAIL, n/a
	Detail string `json:"detail"`
}

// goals collects a run's goals as they are evaluated.
type goals []goal

// add records a goal: PASS or FAIL by ok, n/a when ok is nil (not measured).
func (g *goals) add(name string, ok *bool, detail string) {
	st := "n/a"
	if ok != nil {
		st = map[bool]string{true: "PASS", false: "FAIL"}[*ok]
	}
	*g = append(*g, goal{Goal: name, Status: st, Detail: detail})
}

// info records a figure that is reported, not judged.
func (g *goals) info(name, detail string) {
	*g = append(*g, goal{Goal: name, Status: "info", Detail: detail})
}

// yes makes an outcome for add.
func yes(v bool) *bool { return &v }

type results struct {
	Mode       string   `json:"mode"`
	GoalsTitle string   `json:"goals_title"`
	Header     []string `json:"header"`
	Rows       []*row   `json:"rows"`
	Goals      []goal   `json:"goals"`
	Notes      []string `json:"notes"`
	Soak       *soakOut `json:"soak,omitempty"`
	// TokenCDN is what each system did at the token + CDN upstream.
	TokenCDN map[string]*cdnSide `json:"token_cdn,omitempty"`
	Seconds  float64             `json:"elapsed_seconds"`
}

func median(xs []float64) *float64 {
	if len(xs) == 0 {
		return nil
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	var m float64
	if len(s)%2 == 1 {
		m = s[len(s)/2]
	} else {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return &m
}

func div(a, b *float64) *float64 {
	if a == nil || b == nil || *b == 0 {
		return nil
	}
	v := *a / *b
	return &v
}

// finish fills the values from the series (medians) and the ratio
// columns (paired per repetition when there is a series).
func (r *row) finish() {
	if s := r.series; s != nil {
		r.MP, r.Ref = median(s.valid("multiproxy")), median(s.valid("reference"))
		if r.BaseName != "" {
			r.Base = median(s.valid(r.BaseName))
		}
		r.Samples = s.samples()
		ratio := func(x, y float64) float64 { return x / y }
		inv := func(x, y float64) float64 { return y / x }
		r.Ratio = s.paired("multiproxy", "reference", ratio)
		if r.BaseName != "" {
			f := ratio
			if r.isTime {
				f = inv
			}
			r.MPvsBase = s.paired("multiproxy", r.BaseName, f)
			r.RefvsBase = s.paired("reference", r.BaseName, f)
		}
		return
	}
	r.Ratio = div(r.MP, r.Ref)
	if r.Base == nil {
		return
	}
	if r.isTime {
		r.MPvsBase = div(r.Base, r.MP)
		r.RefvsBase = div(r.Base, r.Ref)
	} else {
		r.MPvsBase = div(r.MP, r.Base)
		r.RefvsBase = div(r.Ref, r.Base)
	}
}

func fmtVal(v *float64) string {
	if v == nil {
		return "n/a"
	}
	a := math.Abs(*v)
	switch {
	case a == 0:
		return "0"
	case a >= 1000:
		return fmt.Sprintf("%.0f", *v)
	case a >= 100:
		return fmt.Sprintf("%.1f", *v)
	case a >= 10:
		return fmt.Sprintf("%.2f", *v)
	default:
		return fmt.Sprintf("%.3f", *v)
	}
}

func fmtRatio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *v)
}

// printTable writes the one table: rows, then goals and notes.
func printTable(w io.Writer, res *results) {
	for _, h := range res.Header {
		fmt.Fprintln(w, h)
	}
	if len(res.Rows) > 0 {
		printRows(w, res.Rows)
	}
	if res.Soak != nil {
		printSoak(w, res.Soak)
	}
	if len(res.Goals) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, res.GoalsTitle+" - where multiproxy stands; a report, never a CI failure:")
		for _, g := range res.Goals {
			fmt.Fprintf(w, "  [%-4s] %s: %s\n", g.Status, g.Goal, g.Detail)
		}
	}
	if len(res.Notes) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Notes:")
		for _, n := range res.Notes {
			fmt.Fprintln(w, "  - "+n)
		}
	}
	fmt.Fprintf(w, "\nelapsed %.0f s\n", res.Seconds)
}

func printRows(w io.Writer, rows []*row) {
	cols := []string{"metric", "unit", "multiproxy", "reference", "mp/ref", "baseline", "mp vs base", "ref vs base"}
	table := [][]string{cols}
	for _, r := range rows {
		mp, ref, base := fmtVal(r.MP), fmtVal(r.Ref), fmtVal(r.Base)
		if r.MPText != "" {
			mp = r.MPText
		}
		if r.RefText != "" {
			ref = r.RefText
		}
		if r.BaseText != "" {
			base = r.BaseText
		}
		if r.BaseName != "" {
			base = r.BaseName + " " + base
		} else {
			base = "-"
		}
		table = append(table, []string{r.Metric, r.Unit, mp, ref, fmtRatio(r.Ratio), base,
			fmtRatio(r.MPvsBase), fmtRatio(r.RefvsBase)})
	}
	width := make([]int, len(cols))
	for _, t := range table {
		for i, c := range t {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(t []string) {
		var b strings.Builder
		for i, c := range t {
			pad := width[i] - len([]rune(c))
			if i == 0 || i == 1 || i == 5 {
				b.WriteString(c + strings.Repeat(" ", pad))
			} else {
				b.WriteString(strings.Repeat(" ", pad) + c)
			}
			if i < len(t)-1 {
				b.WriteString(" | ")
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	line(table[0])
	sep := make([]string, len(cols))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, t := range table[1:] {
		line(t)
	}
	var notes []string
	for _, r := range rows {
		if r.Note != "" {
			notes = append(notes, r.Metric+": "+r.Note)
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, "  * "+n)
		}
	}
}

func writeJSON(path string, res *results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
