package procs

import (
	"runtime"
	"strconv"
	"testing"
)

func TestForBlockingIO(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	first := CPUs()
	t.Setenv("GOMAXPROCS", "")
	if n := ForBlockingIO(); n < MinForIO || runtime.GOMAXPROCS(0) != n {
		t.Fatalf("ForBlockingIO set %d, GOMAXPROCS is %d; want at least %d", n, runtime.GOMAXPROCS(0), MinForIO)
	}
	if CPUs() != first {
		t.Fatalf("CPUs went from %d to %d: pools would grow with the Ps", first, CPUs())
	}
	// An operator's GOMAXPROCS stands.
	runtime.GOMAXPROCS(3)
	t.Setenv("GOMAXPROCS", strconv.Itoa(3))
	if n := ForBlockingIO(); n != 3 || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("with GOMAXPROCS=3 set, ForBlockingIO made it %d", runtime.GOMAXPROCS(0))
	}
}
