#!/bin/sh
# Rebuilds the tiny exec trampolines from their assembly sources; the
# built files are committed (and embedded by tramp_linux_*.go), so only
# whoever changes a .S file needs these tools:
#   amd64: cpp and binutils for x86-64 (native, or binutils-x86-64-linux-gnu)
#   arm64: binutils-aarch64-linux-gnu (or native)
# Run through `go generate ./internal/reexec/`, or directly from here.
set -eu
cd "$(dirname "$0")"

tool() { # tool ARCH-PREFIX NAME: the cross tool, else the native one
	if command -v "$1-$2" >/dev/null 2>&1; then
		echo "$1-$2"
	elif [ "$(uname -m)" = "$3" ]; then
		echo "$2"
	else
		echo "gen.sh: neither $1-$2 nor a native $3 $2 found" >&2
		exit 1
	fi
}

build() { # build GOARCH GNU-PREFIX UNAME-M
	as=$(tool "$2" as "$3")
	ld=$(tool "$2" ld "$3")
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	cpp -P -x assembler-with-cpp "$1.S" >"$tmp/$1.s"
	"$as" -o "$tmp/$1.o" "$tmp/$1.s"
	# One read+execute segment, no build id, no symbols: a few hundred
	# bytes instead of the 4 KiB pages a default link pads to.
	"$ld" -static -s --build-id=none -z noseparate-code -z max-page-size=4096 \
		-o "$1.bin" "$tmp/$1.o"
	rm -rf "$tmp"
	trap - EXIT
	echo "tramp/$1.bin: $(wc -c <"$1.bin") bytes"
}

build amd64 x86_64-linux-gnu x86_64
build arm64 aarch64-linux-gnu aarch64
