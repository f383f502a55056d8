package nsholder

// The holder process is holder.c, a constructor that takes over before the
// Go runtime starts when the binary runs as Mode: see there.

// #cgo CFLAGS: -Wall -Wextra -Werror -O2
import "C"
