package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

func logCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "log-check STATE/disks/VM/DISK",
		Short: "Verify a disk's change log without changing it",
		Long: `Reads every record of a disk's change log and checks its framing, checksums and
sequence, judging it exactly as the primary does when it opens the log. A torn
tail (an end a crash left unfinished, never made durable) is reported with the
bytes the next open will cut, and is not an error (exit 0). Damage to durable
records is corruption (exit 3): the disk needs a resync.`,
		Args: cobra.ExactArgs(1),
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
			if torn != nil {
				verdict = fmt.Sprintf("torn tail, %d bytes would be cut at open (%s at offset %d: %s)", torn.Bytes, torn.Segment, torn.Offset, torn.Reason)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d records (%d writes, %d bytes; %d points): %s\n", dir, records, writes, bytes, markers, verdict)
			return nil
		},
	}
}
