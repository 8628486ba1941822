package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// applyConfig reads a YAML file of settings named like the command's
// flags (with _ for -: tls_dir is --tls-dir) and sets every flag the
// command line did not set. So a daemon's file and its flags are one
// set of settings, parsed and checked by the same code, and a new flag
// is a new setting with nothing to add here. A list sets a repeatable
// flag once per element; a map sets it once per KEY=VALUE.
func applyConfig(f *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var settings map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&settings); err != nil && err.Error() != "EOF" {
		return fmt.Errorf("%w: %s: %v", errUsage, path, err)
	}
	for key, v := range settings {
		name := strings.ReplaceAll(key, "_", "-")
		fl := f.Lookup(name)
		if fl == nil || fl.Hidden || name == "config" {
			return fmt.Errorf("%w: %s: unknown setting %q", errUsage, path, key)
		}
		if fl.Changed {
			continue // the command line wins
		}
		var values []string
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				values = append(values, fmt.Sprint(e))
			}
		case map[string]any:
			for k, e := range v {
				values = append(values, k+"="+fmt.Sprint(e))
			}
		case nil:
		default:
			values = []string{fmt.Sprint(v)}
		}
		for _, s := range values {
			if err := f.Set(name, s); err != nil {
				return fmt.Errorf("%w: %s: %s: %v", errUsage, path, key, err)
			}
		}
	}
	return nil
}
