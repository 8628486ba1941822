package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

// LogCheck is what vrep log-check --json prints.
type LogCheck struct {
	Dir        string `json:"dir"`
	Records    int    `json:"records"`
	Writes     int    `json:"writes"`
	WriteBytes int64  `json:"write_bytes"`
	Points     int    `json:"points"`
	// TornBytes, when not 0, is the torn tail the next open cuts, and
	// Torn where and why.
	TornBytes int64  `json:"torn_bytes,omitempty"`
	Torn      string `json:"torn,omitempty"`
}

func logCheckCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "log-check STATE/disks/VM/DISK",
		Short: "Verify a disk's change log without changing it",
		Long: `Reads every record of a disk's change log and checks its framing, checksums and
sequence, judging it exactly as the primary does when it opens the log. A torn
tail (an end a crash left unfinished, never made durable) is reported with the
bytes the next open will cut, and is not an error (exit 0). Damage to durable
records is corruption (exit 3): the disk needs a resync.`,
		Args: cobra.ExactArgs(1),
		// NB: a corrupt log is an error (exit 3, one sentence on stderr)
		// with or without --json.
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := filepath.Join(args[0], "log")
			var records, writes, markers int
			var bytes int64
			torn, err := hrl.Check(vfs.OS{}, dir, func(r hrl.Record) {
				records++
				switch r.Type {
				case hrl.TypeWrite:
					writes++
					bytes += int64(len(r.Payload))
				case hrl.TypeMarker:
					markers++
				}
			})
			if err != nil {
				return err
			}
			verdict := "ok"
			res := LogCheck{Dir: dir, Records: records, Writes: writes, WriteBytes: bytes, Points: markers}
			if torn != nil {
				res.TornBytes, res.Torn = torn.Bytes, fmt.Sprintf("%s at offset %d: %s", torn.Segment, torn.Offset, torn.Reason)
				verdict = fmt.Sprintf("torn tail, %d bytes would be cut at open (%s)", torn.Bytes, res.Torn)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d records (%d writes, %d bytes; %d points): %s\n", dir, records, writes, bytes, markers, verdict)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}
