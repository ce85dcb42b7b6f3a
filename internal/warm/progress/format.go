package progress

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// This file: how figures and text are shaped to fit a column.

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func percent(done, total int64) int {
	if total <= 0 {
		return 0
	}
	return int(min(done*100/total, 100))
}

func bar(done, total int64, w int) string {
	fill := 0
	if total > 0 {
		fill = int(min(done*int64(w)/total, int64(w)))
	}
	switch {
	case fill == w:
		return strings.Repeat("=", w)
	case fill == 0:
		return strings.Repeat(" ", w)
	}
	return strings.Repeat("=", fill-1) + ">" + strings.Repeat(" ", w-fill)
}

// cut shortens s to w columns, counting a rune as one: references are
// ASCII, and a server's error text nearly so.
func cut(s string, w int) string {
	if utf8.RuneCountInString(s) <= w {
		return s
	}
	r := []rune(s)
	if w <= 3 {
		return string(r[:max(w, 0)])
	}
	return string(r[:w-3]) + "..."
}

// size is a byte count in binary units, as registries and docker show them.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func duration(t time.Duration) string {
	t = t.Round(time.Second)
	switch {
	case t < time.Minute:
		return fmt.Sprintf("%ds", int(t.Seconds()))
	case t < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(t.Minutes()), int(t.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%02dm", int(t.Hours()), int(t.Minutes())%60)
	}
}
