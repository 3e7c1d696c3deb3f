package reexec

import _ "embed"

// tinyTramp is tramp/amd64.S built by tramp/gen.sh.
//
//go:embed tramp/amd64.bin
var tinyTramp string
