// shard.cpp — encode, write and validate token shards (format in shard.hpp).
#include "engine/data/shard.hpp"

#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "engine/data/data_error.hpp"
#include "engine/data/mapped_file.hpp"
#include "engine/receipts/atomic_file.hpp"
#include "engine/receipts/sha256.hpp"

namespace megacpp::data {

namespace {

void put_le(std::string& s, std::size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Printable form of the first bytes of a file, for "bad magic" messages.
std::string printable(const uint8_t* p, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      s.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      s += buf;
    }
  }
  return s;
}

bool is_hex_digest(const uint8_t* p) {
  for (int i = 0; i < 64; ++i)
    if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return false;
  return true;
}

}  // namespace

std::string encode_shard(std::span<const uint16_t> tokens, uint32_t vocab_size) {
  if (vocab_size == 0 || vocab_size > 65536)
    throw std::invalid_argument("shard vocabulary size " + std::to_string(vocab_size) + " does not fit uint16 tokens");
  std::string s(kShardHeaderBytes + 2 * tokens.size(), '\0');
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= vocab_size)
      throw std::invalid_argument("token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                  " is outside the vocabulary of " + std::to_string(vocab_size));
    put_le(s, kShardHeaderBytes + 2 * i, tokens[i], 2);
  }
  const std::string digest = sha256_hex(std::string_view(s).substr(kShardHeaderBytes));
  std::memcpy(s.data(), kShardMagic, 8);
  put_le(s, 8, kShardVersion, 4);
  put_le(s, 12, kShardHeaderBytes, 4);
  put_le(s, 16, tokens.size(), 8);
  put_le(s, 24, vocab_size, 4);
  std::memcpy(s.data() + 32, digest.data(), 64);
  return s;
}

ShardHeader write_shard(const std::string& path, std::span<const uint16_t> tokens, uint32_t vocab_size) {
  const std::string bytes = encode_shard(tokens, vocab_size);
  write_file_atomic(path, bytes);
  ShardHeader h;
  h.tokens = tokens.size();
  h.vocab_size = vocab_size;
  h.sha256 = bytes.substr(32, 64);
  return h;
}

ShardHeader validate_shard(const std::string& path, const uint8_t* b, std::size_t size) {
  const auto fail = [&](const std::string& what) { throw DataError(path, "bad token shard: " + what); };
  if (size < 8 || std::memcmp(b, kShardMagic, 8) != 0) {
    if (size == 0) fail("truncated: the file is empty (expected at least the " + std::to_string(kShardHeaderBytes) +
                        "-byte header)");
    fail("bad magic: expected 'MEGATOK1', found '" + printable(b, size < 8 ? size : 8) +
         "' (not a megacpp token shard)");
  }
  if (size < kShardHeaderBytes)
    fail("truncated: expected at least " + std::to_string(kShardHeaderBytes) + " bytes (the header), found " +
         std::to_string(size));
  ShardHeader h;
  h.version = static_cast<uint32_t>(get_le(b + 8, 4));
  if (h.version != kShardVersion)
    fail("unsupported format version " + std::to_string(h.version) + " (this build reads version " +
         std::to_string(kShardVersion) + ")");
  const uint64_t header_bytes = get_le(b + 12, 4);
  if (header_bytes != kShardHeaderBytes)
    fail("corrupt header: header size " + std::to_string(header_bytes) + ", expected " +
         std::to_string(kShardHeaderBytes));
  h.tokens = get_le(b + 16, 8);
  h.vocab_size = static_cast<uint32_t>(get_le(b + 24, 4));
  if (h.vocab_size == 0 || h.vocab_size > 65536)
    fail("corrupt header: vocabulary size " + std::to_string(h.vocab_size) + " (expected 1..65536)");
  if (!is_hex_digest(b + 32)) fail("corrupt header: the checksum field is not a SHA-256 hex digest");
  h.sha256.assign(reinterpret_cast<const char*>(b + 32), 64);
  // Overflow-safe expected size: a corrupt count must not wrap around.
  if (h.tokens > (UINT64_MAX - kShardHeaderBytes) / 2)
    fail("corrupt header: token count " + std::to_string(h.tokens) + " is impossible");
  const uint64_t expected = kShardHeaderBytes + 2 * h.tokens;
  if (size < expected)
    fail("truncated: expected " + std::to_string(expected) + " bytes (" + std::to_string(kShardHeaderBytes) +
         "-byte header + " + std::to_string(h.tokens) + " tokens x 2), found " + std::to_string(size));
  if (size > expected)
    fail("size mismatch: expected " + std::to_string(expected) + " bytes (" + std::to_string(kShardHeaderBytes) +
         "-byte header + " + std::to_string(h.tokens) + " tokens x 2), found " + std::to_string(size) +
         " (extra bytes after the tokens)");
  const std::string actual = sha256_hex(std::string_view(reinterpret_cast<const char*>(b + kShardHeaderBytes),
                                                         static_cast<std::size_t>(2 * h.tokens)));
  if (actual != h.sha256)
    fail("checksum mismatch: the header records sha256 " + h.sha256 + " but the token bytes hash to " + actual +
         " (the file is corrupt; re-run megacpp data prepare)");
  const uint8_t* t = b + kShardHeaderBytes;
  for (uint64_t i = 0; i < h.tokens; ++i) {
    const uint16_t v = load_le16(t + 2 * i);
    if (v >= h.vocab_size)
      fail("token " + std::to_string(v) + " at index " + std::to_string(i) + " is outside the vocabulary of " +
           std::to_string(h.vocab_size));
  }
  return h;
}

ShardHeader check_shard_file(const std::string& path) {
  const MappedFile f(path);
  return validate_shard(path, f.data(), f.size());
}

std::vector<uint16_t> read_shard(const std::string& path) {
  const MappedFile f(path);
  const ShardHeader h = validate_shard(path, f.data(), f.size());
  std::vector<uint16_t> out(static_cast<std::size_t>(h.tokens));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = load_le16(f.data() + kShardHeaderBytes + 2 * i);
  return out;
}

}  // namespace megacpp::data
