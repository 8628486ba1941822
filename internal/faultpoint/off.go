//go:build !faultpoints

package faultpoint

// Enabled reports whether this build has fault points (the faultpoints
// build tag).
const Enabled = false

// Hit does nothing: this build has no fault points, whatever the
// environment says.
func Hit(string) {}
