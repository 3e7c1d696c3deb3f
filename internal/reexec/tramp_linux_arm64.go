package reexec

import _ "embed"

// tinyTramp is tramp/arm64.S built by tramp/gen.sh.
//
//go:embed tramp/arm64.bin
var tinyTramp string
