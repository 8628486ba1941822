// Package seed is vrep's offline initial replication: the media a
// primary writes (vrep seed export) and a replica reads back (vrep seed
// import) instead of sending a disk's first copy over the network.
//
// The media are N directories, each standing for one drive. A disk is cut
// into chunks of ChunkSize bytes; a chunk of zeros is only marked in the
// manifest; every other chunk is split into K data pieces and coded with
// Reed-Solomon (klauspost/reedsolomon) into M more parity pieces
// (N = K + M), and piece i of every stored chunk goes, in chunk order, to
// shard file i in directory i. Any K intact pieces of a chunk rebuild it:
// up to M directories may be lost or damaged.
//
// Hashes are xxh3 (zeebo/xxh3): a fast non-cryptographic hash, which is
// what damaged media call for (a drive's bit rot, a truncated copy), and
// the same family the checksum resync uses; the media are not a security
// boundary (the primary's identity is checked by the replica's import
// against its operator's arguments, and the stream that follows is mTLS).
//
// # Files in each directory
//
//	manifest.vseed    the manifest (the same in every directory), written
//	                  last: a directory without one holds no finished seed
//	DISK.shard        one shard file per disk of the VM
//
// # Manifest
//
//	magic    8 bytes  "VRSEEDMF"
//	version  uint16   1
//	zero     2 bytes
//	length   uint32   of the JSON body, at most MaxManifest
//	body     JSON: Manifest
//	crc      uint32   CRC32C of everything before it
//
// All integers are little-endian. Within the body, for each disk: Zero is
// a bitmap (bit i of byte i/8, least significant first) of the chunks
// that are all zeros and not stored; Hashes holds the xxh3-128 (big-
// endian Bytes) of each stored chunk in order, over the chunk's bytes as
// on the disk (the last chunk stops at the disk's end); Shards[i] is the
// size and xxh3-128 of shard file i, whole.
//
// # Shard file
//
//	magic    8 bytes  "VRSEEDSH"
//	version  uint16   1
//	index    uint16   the shard's index, 0..N-1 (data shards first)
//	count    uint16   N
//	zero     2 bytes
//	seed     16 bytes the seed's id (Manifest.SeedID)
//	pieces   for each stored chunk j, in order: PieceSize bytes, then the
//	         xxh3-64 of those bytes seeded with j<<16 | index (uint64)
//
// PieceSize is ceil(ChunkSize/K); a chunk shorter than ChunkSize (the
// disk's last) is padded with zeros before it is split. Piece j of shard
// i therefore sits at HeaderSize + j*(PieceSize+8): readers stream each
// shard file in order, one reader per drive.
//
// The magics, the version and these layouts are part of the format; do
// not change them.
package seed
