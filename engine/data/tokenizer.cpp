// tokenizer.cpp — the byte-level tokenizer and the factory that maps a recipe's name to one.
#include "engine/data/tokenizer.hpp"

#include <stdexcept>

namespace megacpp::data {

void ByteTokenizer::encode_into(std::string_view text, std::vector<int32_t>& out) const {
  out.reserve(out.size() + text.size());
  for (const char c : text) out.push_back(static_cast<int32_t>(static_cast<unsigned char>(c)));
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids) const {
  std::string s;
  s.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id >= 0 && id < 256) s.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    else if (id != kBos && id != kEos)
      throw std::invalid_argument("byte tokenizer: token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                  std::to_string(kVocab) + ")");
  }
  return s;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  throw std::invalid_argument("unknown tokenizer '" + name + "'; this build has: byte");
}

}  // namespace megacpp::data
