// Constants of state format 1.x (docs/state-format.md), shared by the writer and the reader.
// Owns nothing else. Thread-safe: constants.
#pragma once

#include <cstdint>

namespace kvstash::statefmt {

constexpr uint8_t kMagic[8] = {'K', 'V', 'S', 'T', 'A', 'T', 'E', 0x1a};  // §2
constexpr uint16_t kMajor = 1;
constexpr uint16_t kMinor = 1;  // §2.1: 1.1 writes CEL2; 1.0 files (CELL) are still read
constexpr uint32_t kEndianMarker = 0x01020304;
constexpr uint32_t kHeaderBytes = 64;
constexpr uint32_t kMaxHeaderBytes = 4096;
constexpr uint32_t kFrameBytes = 16;    // tag, flags, payload bytes (§3)
constexpr uint32_t kTrailerBytes = 8;   // checksum
constexpr uint32_t kFlagRequired = 1;
constexpr uint32_t kStreamRecordBytes = 32;  // §4.3
constexpr uint32_t kCellRecordBytes = 16;    // §4.4.1 CELL: i32 pos, i32 token, u64 sequences
constexpr uint32_t kCellsPrefixBytes = 4;    // §4.4.1 CELL: u32 n_cells
constexpr uint32_t kCells2PrefixBytes = 8;   // §4.4.2 CEL2: u32 n_cells, u32 n_runs
constexpr uint32_t kCellRunBytes = 16;       // §4.4.2 CEL2: i32 first pos, u32 count, u64 sequences
constexpr uint32_t kCellTokenBytes = 4;      // §4.4.2 CEL2: i32 token per cell
constexpr uint64_t kMaxSmallSection = uint64_t(1) << 20;  // META, MODL, LAYT are far smaller

constexpr uint32_t tag(const char (&s)[5]) {
  return uint32_t(uint8_t(s[0])) | uint32_t(uint8_t(s[1])) << 8 | uint32_t(uint8_t(s[2])) << 16 | uint32_t(uint8_t(s[3])) << 24;
}
constexpr uint32_t kTagMeta = tag("META");
constexpr uint32_t kTagModel = tag("MODL");
constexpr uint32_t kTagLayout = tag("LAYT");
constexpr uint32_t kTagCells = tag("CELL");   // 1.0 cells (§4.4.1)
constexpr uint32_t kTagCells2 = tag("CEL2");  // 1.1 cells (§4.4.2)
constexpr uint32_t kTagKv = tag("KVDT");
constexpr uint32_t kTagLogits = tag("LOGT");
constexpr uint32_t kTagEnd = tag("END!");

}  // namespace kvstash::statefmt
