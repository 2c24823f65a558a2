// tokenizer.hpp — text <-> token ids behind an interface, so the byte-level tokenizer of today can
// be replaced by a BPE without touching prepare, shards or the loader (they only see ids, the
// vocabulary size and the BOS/EOS ids). Token ids are int32 in memory and uint16 on disk, so a
// tokenizer's vocabulary must fit in 65536.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace megacpp::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;        // as written in recipes and manifests, e.g. "byte"
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos() const = 0;             // begins every document
  virtual int32_t eos() const = 0;             // ends every document
  // Appends the ids of `text` (no BOS/EOS) to `out`.
  virtual void encode_into(std::string_view text, std::vector<int32_t>& out) const = 0;
  // The text of `ids`; BOS/EOS produce no text. Throws std::invalid_argument on an id outside the vocab.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;

  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> out;
    encode_into(text, out);
    return out;
  }
};

// 256 byte tokens (id = byte value) + BOS = 256 + EOS = 257: vocabulary 258. Lossless on any bytes.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kBos = 256, kEos = 257, kVocab = 258;
  std::string name() const override { return "byte"; }
  int32_t vocab_size() const override { return kVocab; }
  int32_t bos() const override { return kBos; }
  int32_t eos() const override { return kEos; }
  void encode_into(std::string_view text, std::vector<int32_t>& out) const override;
  std::string decode(std::span<const int32_t> ids) const override;
};

// "byte" -> ByteTokenizer; anything else throws std::invalid_argument naming the known tokenizers.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

}  // namespace megacpp::data
