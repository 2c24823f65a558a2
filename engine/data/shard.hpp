// shard.hpp — the on-disk format of a token shard, and the only code that reads or writes it.
//
//   offset size  field
//        0    8  magic "MEGATOK1"
//        8    4  format version (uint32 LE) = 1
//       12    4  header size in bytes (uint32 LE) = 96
//       16    8  token count N (uint64 LE)
//       24    4  vocabulary size (uint32 LE), <= 65536
//       28    4  reserved, 0
//       32   64  SHA-256 of the 2N token bytes, lowercase hex ASCII
//       96   2N  tokens, uint16 little-endian
//
// Written atomically (write_file_atomic), so a reader never sees half a shard. A reader validates
// magic, version, exact file size, checksum and token range, and refuses with a DataError that names
// the file and what is wrong.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace megacpp::data {

inline constexpr char kShardMagic[9] = "MEGATOK1";
inline constexpr uint32_t kShardVersion = 1;
inline constexpr std::size_t kShardHeaderBytes = 96;

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint64_t tokens = 0;
  uint32_t vocab_size = 0;
  std::string sha256;  // hex, of the token bytes
};

// Header + tokens as the bytes of a shard file. Throws std::invalid_argument on a token >= vocab_size.
std::string encode_shard(std::span<const uint16_t> tokens, uint32_t vocab_size);
// Writes a shard atomically; returns its header (with the checksum).
ShardHeader write_shard(const std::string& path, std::span<const uint16_t> tokens, uint32_t vocab_size);

// Validates the bytes of a whole shard file (`path` only names it in errors): magic, version, header
// size, exact file size, checksum, every token < vocab_size. Throws DataError. The tokens start at
// bytes + kShardHeaderBytes.
ShardHeader validate_shard(const std::string& path, const uint8_t* bytes, std::size_t size);
// Maps and validates a shard file.
ShardHeader check_shard_file(const std::string& path);
// Reads and validates a shard; returns its tokens.
std::vector<uint16_t> read_shard(const std::string& path);

// Little-endian uint16 at p (shards are little-endian on every host).
inline uint16_t load_le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace megacpp::data
