package progress

import (
	"fmt"
)

// This file: the line an image leaves when it is done with, written as it
// finishes on plain output and above the live area on a terminal.

const (
	red    = "\x1b[31m"
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	reset  = "\x1b[0m"
)

// line is what an image (or a stopped upstream) leaves when it is done
// with: a status word, then what happened.
type line struct {
	word, color, rest string
	// short says that the line may be cut to the terminal's width: a
	// cached image's line says nothing that the table does not, while a
	// reason for a failure must be read whole.
	short bool
}

func (l line) render(color bool, width int) string {
	tag := fmt.Sprintf("%-8s ", l.word)
	rest := l.rest
	if l.short && width > 0 {
		rest = cut(rest, width-1-len(tag))
	}
	if color {
		tag = l.color + l.word + reset + tag[len(l.word):]
	}
	return tag + rest
}

func (d *Display) finishedLine(im *image) *line {
	switch im.state {
	case cached:
		return &line{word: "cached", color: green, short: true,
			rest: fmt.Sprintf("%s  %s, %d blobs  %s", im.ref, size(im.bytes), im.blobs, shortDigest(im.digest))}
	case failed:
		return &line{word: "failed", color: red, rest: fmt.Sprintf("%s via %s: %s", im.ref, im.upstream, im.reason)}
	default:
		return &line{word: "skipped", color: yellow, rest: fmt.Sprintf("%s: %s", im.ref, im.reason)}
	}
}

func shortDigest(dg string) string {
	if len(dg) > len("sha256:")+12 {
		return dg[:len("sha256:")+12]
	}
	return dg
}
