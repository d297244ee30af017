package tui

import "strings"

// terminalText is text as every terminal draws it at the width the layout measures: the joiners and modifiers
// that fuse emoji into one wide cluster (ZWJ sequences such as a family, variation selectors, skin tones) are
// dropped, so each emoji stands alone, two columns wide to the layout and to the terminal alike. A terminal that
// draws a ZWJ family as three emoji (tmux) would otherwise push the row, and the plot beside it, columns right.
func terminalText(s string) string {
	if !strings.ContainsFunc(s, fusing) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if fusing(r) {
			return -1
		}
		return r
	}, s)
}

func fusing(r rune) bool {
	return r == 0x200d || r == 0xfe0e || r == 0xfe0f || r >= 0x1f3fb && r <= 0x1f3ff
}
