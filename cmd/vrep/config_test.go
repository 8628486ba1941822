package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestReplicaConfigFile: the YAML file sets what the command line did
// not; the command line wins; lists and maps set repeatable flags; an
// unknown or malformed setting is a usage error naming it.
func TestReplicaConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "replica.yaml")
	os.WriteFile(file, []byte(`data: /srv/vrep
listen: ":7070"
tls_dir: /etc/vrep/pki
name: replica1
allow: [primary1, primary2=site-b]
nbd: [unix:/run/a.sock]
retention: 36h
keep_app: 4
keep: {vm2: 72h, vm3/disk0: 1h}
`), 0o600)
	cmd := replicaCmd()
	f := cmd.Flags()
	if err := f.Parse([]string{"--name", "other", "--nbd", "unix:/run/b.sock"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(f, file); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return f.Lookup(name).Value.String() }
	if get("data") != "/srv/vrep" || get("listen") != ":7070" || get("tls-dir") != "/etc/vrep/pki" || get("keep-app") != "4" {
		t.Errorf("scalars: data %s listen %s tls-dir %s keep-app %s", get("data"), get("listen"), get("tls-dir"), get("keep-app"))
	}
	if get("name") != "other" || get("nbd") != "[unix:/run/b.sock]" {
		t.Errorf("the command line must win: name %s nbd %s", get("name"), get("nbd"))
	}
	if d, _ := f.GetDuration("retention"); d != 36*time.Hour {
		t.Errorf("retention %v", d)
	}
	allow, _ := f.GetStringArray("allow")
	keep, _ := f.GetStringArray("keep")
	sort.Strings(keep)
	if !slices.Equal(allow, []string{"primary1", "primary2=site-b"}) || !slices.Equal(keep, []string{"vm2=72h", "vm3/disk0=1h"}) {
		t.Errorf("allow %v keep %v", allow, keep)
	}
	for _, bad := range []string{"colour: blue\n", "retention: soon\n", "prune_every: 1s\n", "data: [\n"} {
		os.WriteFile(file, []byte(bad), 0o600)
		err := applyConfig(replicaCmd().Flags(), file)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), file) {
			t.Errorf("%q: %v, want a usage error naming the file", bad, err)
		}
	}
}
