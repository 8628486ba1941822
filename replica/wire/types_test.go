package wire

import "testing"

// TestMessageTypesDistinct: every message type has its own number (two
// branches once picked the same one).
func TestMessageTypesDistinct(t *testing.T) {
	all := map[string]MsgType{
		"Ack": MsgAck, "Adopted": MsgAdopted, "BaseChunk": MsgBaseChunk, "BaseDone": MsgBaseDone,
		"DiskState": MsgDiskState, "Error": MsgError, "Hello": MsgHello, "Keepalive": MsgKeepalive,
		"OpenDisk": MsgOpenDisk, "Promote": MsgPromote, "Promoted": MsgPromoted, "Records": MsgRecords,
		"RecordsRange": MsgRecordsRange, "ResyncChunk": MsgResyncChunk, "ResyncDone": MsgResyncDone,
		"ResyncDurable": MsgResyncDurable, "ResyncFrom": MsgResyncFrom, "ResyncHashes": MsgResyncHashes,
		"ResyncMark": MsgResyncMark, "ResyncResume": MsgResyncResume, "ResyncStart": MsgResyncStart,
		"Reverse": MsgReverse, "ReverseData": MsgReverseData, "Reversed": MsgReversed,
		"Settings": MsgSettings, "Welcome": MsgWelcome,
	}
	seen := map[MsgType]string{}
	for name, v := range all {
		if other, ok := seen[v]; ok {
			t.Errorf("messages %s and %s are both type %d", name, other, v)
		}
		seen[v] = name
	}
}
