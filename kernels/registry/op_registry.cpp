#include "kernels/registry/op_registry.hpp"

#include <stdexcept>

namespace megacpp {

OpShape OpDef::default_shape() const {
  OpShape s;
  for (const auto& p : params) s[p.name] = p.default_value;
  return s;
}

void OpRegistry::add(OpDef op) {
  if (find(op.name)) throw std::logic_error("op registered twice: " + op.name);
  ops_.push_back(std::move(op));
}

const OpDef* OpRegistry::find(const std::string& name) const {
  for (const auto& op : ops_)
    if (op.name == name) return &op;
  return nullptr;
}

std::vector<std::string> OpRegistry::names() const {
  std::vector<std::string> n;
  for (const auto& op : ops_) n.push_back(op.name);
  return n;
}

OpShape resolve_shape(const OpDef& op, const std::map<std::string, int64_t>& overrides) {
  OpShape s = op.default_shape();
  for (const auto& [k, v] : overrides) {
    if (!s.count(k)) throw std::invalid_argument("op " + op.name + " has no shape parameter --" + k);
    s[k] = v;
  }
  return s;
}

std::string shape_to_string(const OpShape& s) {
  std::string out;
  for (const auto& [k, v] : s) {
    if (!out.empty()) out += " ";
    out += k + "=" + std::to_string(v);
  }
  return out;
}

}  // namespace megacpp
