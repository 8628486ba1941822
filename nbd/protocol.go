package nbd

import "github.com/pojntfx/go-nbd/pkg/protocol"

// Protocol constants (NetworkBlockDevice/nbd doc/proto.md). go-nbd's
// protocol package names the ones it implements; the rest are ours.
const (
	magicNBD      = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOpt      = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicRep      = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest  = protocol.TRANSMISSION_MAGIC_REQUEST
	magicReply    = protocol.TRANSMISSION_MAGIC_REPLY
	flagFixedNew  = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes  = uint16(1 << 1)
	clientFixed   = uint32(1 << 0)
	clientNoZero  = uint32(1 << 1)
	optExportName = uint32(1)
	optAbort      = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList       = protocol.NEGOTIATION_ID_OPTION_LIST
	optInfo       = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo         = protocol.NEGOTIATION_ID_OPTION_GO
	optStructured = uint32(8)
	optListMeta   = uint32(9)
	optSetMeta    = uint32(10)

	repAck        = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer     = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo       = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repErrUnsup   = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrInvalid = uint32(3 | 1<<31)
	repErrUnknown = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrTooBig  = uint32(9 | 1<<31)
	repMeta       = uint32(4)

	infoExport    = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoBlockSize = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	// Transmission flags.
	tfHasFlags     = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	tfReadOnly     = uint16(1 << 1)
	tfSendFlush    = uint16(1 << 2)
	tfSendFUA      = uint16(1 << 3)
	tfSendTrim     = uint16(1 << 5)
	tfSendZeroes   = uint16(1 << 6)
	tfSendDF       = uint16(1 << 7)
	tfCanMultiConn = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN

	// Commands.
	cmdRead   = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite  = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc   = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush  = uint16(3)
	cmdTrim   = uint16(4)
	cmdZeroes = uint16(6)
	cmdStatus = uint16(7) // NBD_CMD_BLOCK_STATUS

	// Command flags.
	cfFUA    = uint16(1 << 0)
	cfNoHole = uint16(1 << 1)
	cfDF     = uint16(1 << 2)
	cfReqOne = uint16(1 << 3)

	// Structured replies.
	magicStructured = uint32(0x668e33ef)
	rfDone          = uint16(1 << 0)
	rtNone          = uint16(0)
	rtOffsetData    = uint16(1)
	rtOffsetHole    = uint16(2)
	rtBlockStatus   = uint16(5)
	rtError         = uint16(1<<15 | 1)

	// base:allocation status flags.
	stateHole = uint32(1 << 0)
	stateZero = uint32(1 << 1)

	// Errors.
	errPerm     = protocol.TRANSMISSION_ERROR_EPERM
	errIO       = uint32(5)
	errInval    = protocol.TRANSMISSION_ERROR_EINVAL
	errOverflow = uint32(75)
	errNoSpc    = uint32(28)
	errShutdown = uint32(108)
)

// Limits the server advertises and enforces.
const (
	// MaxRequest is the largest read or write accepted (NBD_INFO_BLOCK_SIZE
	// maximum); longer ones are refused with EINVAL.
	MaxRequest = 32 << 20
	// maxOption bounds an option's data during the handshake.
	maxOption = 64 << 10
	// maxInFlight bounds the requests of one connection being served.
	maxInFlight = 128
	// maxBuffered bounds the payload bytes one connection holds.
	maxBuffered    = 128 << 20
	preferredBlock = 4096
)
