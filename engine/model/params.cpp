#include "engine/model/params.hpp"

#include <algorithm>
#include <stdexcept>

namespace megacpp {

template <typename T>
int ParamStore<T>::add(std::string name, std::vector<int64_t> shape, Init init, bool decay, double init_value) {
  if (!data.empty()) throw std::logic_error("ParamStore::add after finalize: " + name);
  ParamSpec s;
  s.name = std::move(name);
  s.shape = std::move(shape);
  s.numel = 1;
  for (auto d : s.shape) s.numel *= d;
  s.offset = total_;
  s.decay = decay;
  s.init = init;
  s.init_value = init_value;
  // Keep every tensor 16-element aligned (vectorised loops and future device copies).
  total_ += (s.numel + 15) / 16 * 16;
  specs.push_back(std::move(s));
  return static_cast<int>(specs.size()) - 1;
}

template <typename T>
void ParamStore<T>::finalize() {
  data.assign(static_cast<std::size_t>(total_), T(0));
  grads.assign(static_cast<std::size_t>(total_), T(0));
}

template <typename T>
void ParamStore<T>::zero_grad() {
  std::fill(grads.begin(), grads.end(), T(0));
}

template <typename T>
int ParamStore<T>::find(const std::string& name) const {
  for (std::size_t i = 0; i < specs.size(); ++i)
    if (specs[i].name == name) return static_cast<int>(i);
  return -1;
}

template class ParamStore<float>;
template class ParamStore<double>;

}  // namespace megacpp
