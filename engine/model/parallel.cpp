#include "engine/model/parallel.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace megacpp {

namespace {
struct Geo {
  int64_t full_numel, n_outer, full_rows, inner;
  std::vector<std::pair<int64_t, int64_t>> outer, rows, cols;
};
Geo geo(const ParamSpec& s) {
  const std::vector<int64_t>& fs = s.full_shape.empty() ? s.shape : s.full_shape;
  Geo g;
  g.full_numel = 1;
  for (auto d : fs) g.full_numel *= d;
  const bool o = !s.outer.empty();
  if (o && fs.size() < 2) throw std::logic_error("parameter " + s.name + ": an outer shard range needs >= 2 dimensions");
  g.n_outer = o ? fs[0] : 1;
  g.full_rows = fs.empty() ? 1 : fs[o ? 1 : 0];
  g.inner = g.full_rows && g.n_outer ? g.full_numel / (g.full_rows * g.n_outer) : 0;
  g.outer = o ? s.outer : std::vector<std::pair<int64_t, int64_t>>{{0, 1}};
  g.rows = s.rows.empty() ? std::vector<std::pair<int64_t, int64_t>>{{0, g.full_rows}} : s.rows;
  g.cols = !s.cols.empty() ? s.cols : std::vector<std::pair<int64_t, int64_t>>{{s.col_lo, s.col_n < 0 ? g.inner : s.col_n}};
  int64_t n = 0, no = 0, nc = 0;
  for (const auto& r : g.cols) {
    if (r.first < 0 || r.second < 0 || r.first + r.second > g.inner)
      throw std::logic_error("parameter " + s.name + ": shard columns outside the full tensor");
    nc += r.second;
  }
  for (const auto& r : g.rows) {
    if (r.first < 0 || r.second < 0 || r.first + r.second > g.full_rows)
      throw std::logic_error("parameter " + s.name + ": shard rows outside the full tensor");
    n += r.second;
  }
  for (const auto& r : g.outer) {
    if (r.first < 0 || r.second < 0 || r.first + r.second > g.n_outer)
      throw std::logic_error("parameter " + s.name + ": shard outer range outside the full tensor");
    no += r.second;
  }
  if (no * n * nc != s.numel)
    throw std::logic_error("parameter " + s.name + ": shard descriptor does not match its local shape");
  return g;
}
template <typename F>
void walk(const ParamSpec& s, int64_t full_off, F&& f) {  // f(full index, local index)
  const Geo g = geo(s);
  int64_t l = s.offset;
  for (const auto& o : g.outer)
    for (int64_t e = o.first; e < o.first + o.second; ++e)
      for (const auto& r : g.rows)
        for (int64_t row = r.first; row < r.first + r.second; ++row)
          for (const auto& cr : g.cols)
            for (int64_t j = cr.first; j < cr.first + cr.second; ++j) f(full_off + (e * g.full_rows + row) * g.inner + j, l++);
}
}  // namespace

template <typename T>
void shard_rows(ParamStore<T>& ps, int idx, ShardGroup g, std::vector<int64_t> full_shape,
                std::vector<std::pair<int64_t, int64_t>> rows) {
  ParamSpec& s = ps.specs[static_cast<std::size_t>(idx)];
  s.shard = g;
  s.full_shape = std::move(full_shape);
  s.rows = std::move(rows);
  geo(s);  // validates
}

template <typename T>
void shard_cols(ParamStore<T>& ps, int idx, std::vector<int64_t> full_shape, int64_t col_lo, int64_t col_n) {
  ParamSpec& s = ps.specs[static_cast<std::size_t>(idx)];
  s.shard = ShardGroup::tp;
  s.full_shape = std::move(full_shape);
  s.col_lo = col_lo, s.col_n = col_n;
  geo(s);
}

template <typename T>
void shard_general(ParamStore<T>& ps, int idx, ShardGroup g, std::vector<int64_t> full_shape,
                   std::vector<std::pair<int64_t, int64_t>> outer, std::vector<std::pair<int64_t, int64_t>> rows,
                   int64_t col_lo, int64_t col_n) {
  ParamSpec& s = ps.specs[static_cast<std::size_t>(idx)];
  s.shard = g;
  s.full_shape = std::move(full_shape);
  s.outer = std::move(outer);
  s.rows = std::move(rows);
  s.col_lo = col_lo, s.col_n = col_n;
  geo(s);
}

template <typename T>
std::vector<int64_t> full_offsets(const ParamStore<T>& ps) {
  std::vector<int64_t> off;
  int64_t total = 0;
  for (const auto& s : ps.specs) {
    off.push_back(total);
    total += (geo(s).full_numel + 15) / 16 * 16;
  }
  off.push_back(total);
  return off;
}

template <typename T>
int64_t full_numel(const ParamStore<T>& ps) {
  return full_offsets(ps).back();
}

template <typename T>
void shard_from_full(const ParamStore<T>& ps, const T* full, T* local) {
  const auto off = full_offsets(ps);
  for (std::size_t i = 0; i < ps.specs.size(); ++i)
    walk(ps.specs[i], off[i], [&](int64_t fi, int64_t li) { local[li] = full[fi]; });
}

template <typename T>
void gather_full(const ParamStore<T>& ps, const ModelParallel& mp, const T* local, T* full) {
  const auto off = full_offsets(ps);
  std::fill(full, full + off.back(), T(0));
  // Shards are disjoint: every rank writes its part into zeros, a sum over the group assembles the
  // tensor exactly (x + 0 = x).
  for (std::size_t i = 0; i < ps.specs.size(); ++i) {
    const ParamSpec& s = ps.specs[i];
    // TP-replicated elements are written by TP rank 0 only (every rank holds them).
    std::vector<char> skip;
    if (!s.tp_replicated.empty() && mp.tp_rank != 0) {
      skip.assign(static_cast<std::size_t>(s.numel), 0);
      for (const auto& r : s.tp_replicated) std::fill(skip.begin() + r.first, skip.begin() + r.first + r.second, 1);
    }
    walk(s, off[i], [&](int64_t fi, int64_t li) {
      if (skip.empty() || !skip[static_cast<std::size_t>(li - s.offset)]) full[fi] = local[li];
    });
    const auto n = static_cast<std::size_t>(geo(s).full_numel);
    const bool on_tp = s.shard == ShardGroup::tp || s.shard == ShardGroup::tp_ep;
    const bool on_ep = s.shard == ShardGroup::ep || s.shard == ShardGroup::tp_ep;
    if (on_tp && mp.tp_size > 1) mp.tp->all_reduce_sum(full + off[i], n);
    if (on_ep && mp.ep_size > 1) mp.ep->all_reduce_sum(full + off[i], n);
  }
}

template <typename T>
void tp_reduce_partial_grads(ParamStore<T>& ps, const ModelParallel& mp) {
  if (mp.tp_size <= 1) return;
  std::vector<T> buf;
  auto each = [&](auto&& f) {  // f(pointer, count) over every TP-partial gradient range, in a fixed order
    for (std::size_t i = 0; i < ps.specs.size(); ++i) {
      const ParamSpec& s = ps.specs[i];
      T* g = ps.grad(static_cast<int>(i));
      if (s.tp_grad_partial) f(g, s.numel);
      else
        for (const auto& r : s.tp_replicated) f(g + r.first, r.second);
    }
  };
  each([&](T* g, int64_t n) { buf.insert(buf.end(), g, g + n); });
  if (buf.empty()) return;
  mp.tp->all_reduce_sum(buf.data(), buf.size());
  std::size_t k = 0;
  each([&](T* g, int64_t n) {
    std::copy(buf.begin() + static_cast<std::ptrdiff_t>(k), buf.begin() + static_cast<std::ptrdiff_t>(k + static_cast<std::size_t>(n)), g);
    k += static_cast<std::size_t>(n);
  });
}

#define MC_INST(T)                                                                                                 \
  template void shard_rows<T>(ParamStore<T>&, int, ShardGroup, std::vector<int64_t>,                              \
                              std::vector<std::pair<int64_t, int64_t>>);                                           \
  template void shard_cols<T>(ParamStore<T>&, int, std::vector<int64_t>, int64_t, int64_t);                       \
  template void shard_general<T>(ParamStore<T>&, int, ShardGroup, std::vector<int64_t>,                           \
                                 std::vector<std::pair<int64_t, int64_t>>, std::vector<std::pair<int64_t, int64_t>>, \
                                 int64_t, int64_t);                                                                 \
  template std::vector<int64_t> full_offsets<T>(const ParamStore<T>&);                                            \
  template int64_t full_numel<T>(const ParamStore<T>&);                                                           \
  template void shard_from_full<T>(const ParamStore<T>&, const T*, T*);                                            \
  template void gather_full<T>(const ParamStore<T>&, const ModelParallel&, const T*, T*);                        \
  template void tp_reduce_partial_grads<T>(ParamStore<T>&, const ModelParallel&);
MC_INST(float)
MC_INST(double)
#undef MC_INST

}  // namespace megacpp
