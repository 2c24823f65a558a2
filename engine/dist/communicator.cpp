#include "engine/dist/communicator.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <tuple>
#include <thread>

namespace megacpp {

std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : t == DType::f64 ? 8 : 1; }

const char* coll_name(CollKind k) {
  switch (k) {
    case CollKind::all_reduce: return "all_reduce";
    case CollKind::reduce_scatter: return "reduce_scatter";
    case CollKind::all_gather: return "all_gather";
    case CollKind::broadcast: return "broadcast";
    case CollKind::barrier: return "barrier";
    case CollKind::send_recv: return "send_recv";
    default: return "?";
  }
}

// ---- Communicator (common part) ----------------------------------------------------------------

void Communicator::timed(CollKind k, std::size_t bytes, const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  auto& s = stats_[static_cast<std::size_t>(k)];
  s.calls += 1;
  s.bytes += static_cast<int64_t>(bytes);
  s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

nlohmann::json Communicator::stats_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (std::size_t i = 0; i < stats_.size(); ++i)
    if (stats_[i].calls > 0)
      j[coll_name(static_cast<CollKind>(i))] = {{"calls", stats_[i].calls}, {"seconds", stats_[i].seconds}, {"bytes", stats_[i].bytes}};
  return j;
}

void Communicator::all_reduce_sum(float* buf, std::size_t n) {
  timed(CollKind::all_reduce, n * 4, [&] { do_all_reduce(buf, n, DType::f32); });
}
void Communicator::all_reduce_sum(double* buf, std::size_t n) {
  timed(CollKind::all_reduce, n * 8, [&] { do_all_reduce(buf, n, DType::f64); });
}
void Communicator::reduce_scatter_sum(const float* send, float* recv, std::size_t n) {
  timed(CollKind::reduce_scatter, n * 4 * static_cast<std::size_t>(world()), [&] { do_reduce_scatter(send, recv, n, DType::f32); });
}
void Communicator::reduce_scatter_sum(const double* send, double* recv, std::size_t n) {
  timed(CollKind::reduce_scatter, n * 8 * static_cast<std::size_t>(world()), [&] { do_reduce_scatter(send, recv, n, DType::f64); });
}
void Communicator::all_gather(const float* send, float* recv, std::size_t n) {
  timed(CollKind::all_gather, n * 4, [&] { do_all_gather(send, recv, n, DType::f32); });
}
void Communicator::all_gather(const double* send, double* recv, std::size_t n) {
  timed(CollKind::all_gather, n * 8, [&] { do_all_gather(send, recv, n, DType::f64); });
}
void Communicator::all_gather_bytes(const void* send, void* recv, std::size_t bytes) {
  timed(CollKind::all_gather, bytes, [&] { do_all_gather(send, recv, bytes, DType::u8); });
}
void Communicator::broadcast(void* buf, std::size_t bytes, int root) {
  timed(CollKind::broadcast, bytes, [&] { do_broadcast(buf, bytes, root); });
}
void Communicator::barrier() {
  timed(CollKind::barrier, 0, [&] { do_barrier(); });
}

void Communicator::group_start() {
  if (in_group_) throw std::logic_error("Communicator::group_start: already in a group");
  in_group_ = true;
  pending_.clear();
}

void Communicator::send(const void* buf, std::size_t bytes, int peer) {
  if (!in_group_) throw std::logic_error("Communicator::send outside group_start/group_end");
  if (peer < 0 || peer >= world()) throw std::invalid_argument("Communicator::send: peer " + std::to_string(peer) + " outside world " + std::to_string(world()));
  pending_.push_back({true, const_cast<void*>(buf), bytes, peer});
}

void Communicator::recv(void* buf, std::size_t bytes, int peer) {
  if (!in_group_) throw std::logic_error("Communicator::recv outside group_start/group_end");
  if (peer < 0 || peer >= world()) throw std::invalid_argument("Communicator::recv: peer " + std::to_string(peer) + " outside world " + std::to_string(world()));
  pending_.push_back({false, buf, bytes, peer});
}

void Communicator::group_end() {
  if (!in_group_) throw std::logic_error("Communicator::group_end without group_start");
  in_group_ = false;
  std::size_t bytes = 0;
  for (const auto& o : pending_)
    if (o.is_send) bytes += o.bytes;
  std::vector<P2P> ops;
  ops.swap(pending_);
  timed(CollKind::send_recv, bytes, [&] { do_group(ops); });
}

void Communicator::all_to_all_bytes(const void* send_buf, void* recv_buf, std::size_t b) {
  group_start();
  for (int q = 0; q < world(); ++q) {
    send(static_cast<const char*>(send_buf) + static_cast<std::size_t>(q) * b, b, q);
    recv(static_cast<char*>(recv_buf) + static_cast<std::size_t>(q) * b, b, q);
  }
  group_end();
}

void Communicator::all_to_all_v(const void* send_buf, const std::vector<std::size_t>& send_bytes,
                                const std::vector<std::size_t>& send_off, void* recv_buf,
                                const std::vector<std::size_t>& recv_bytes, const std::vector<std::size_t>& recv_off) {
  const auto W = static_cast<std::size_t>(world());
  if (send_bytes.size() != W || send_off.size() != W || recv_bytes.size() != W || recv_off.size() != W)
    throw std::invalid_argument("Communicator::all_to_all_v: count/offset vectors must have world()=" + std::to_string(W) + " entries");
  group_start();
  for (std::size_t q = 0; q < W; ++q) {
    if (send_bytes[q]) send(static_cast<const char*>(send_buf) + send_off[q], send_bytes[q], static_cast<int>(q));
    if (recv_bytes[q]) recv(static_cast<char*>(recv_buf) + recv_off[q], recv_bytes[q], static_cast<int>(q));
  }
  group_end();
}

namespace {
std::mutex g_probe_mu;
std::function<std::string()> g_probe;
}  // namespace

void set_fault_probe(std::function<std::string()> probe) {
  std::lock_guard<std::mutex> lk(g_probe_mu);
  g_probe = std::move(probe);
}

std::string probe_faults() {
  std::function<std::string()> p;
  {
    std::lock_guard<std::mutex> lk(g_probe_mu);
    p = g_probe;
  }
  if (!p) return "";
  try {
    return p();
  } catch (const std::exception& e) {
    return std::string("(fault probe failed: ") + e.what() + ")";
  }
}

std::string broadcast_string(Communicator& c, const std::string& s, int root) {
  uint64_t n = s.size();
  c.broadcast(&n, sizeof n, root);
  std::string out = c.rank() == root ? s : std::string(n, '\0');
  if (n) c.broadcast(out.data(), n, root);
  return out;
}

void verify_same_config(Communicator& c, const std::string& sha) {
  constexpr std::size_t L = 64;
  std::string mine = sha.substr(0, L);
  mine.resize(L, ' ');
  std::string all(L * static_cast<std::size_t>(c.world()), '\0');
  c.all_gather_bytes(mine.data(), all.data(), L);
  std::string bad;
  for (int q = 1; q < c.world(); ++q)
    if (all.compare(static_cast<std::size_t>(q) * L, L, all, 0, L) != 0)
      bad += (bad.empty() ? "" : ", ") + std::to_string(q) + " (" + all.substr(static_cast<std::size_t>(q) * L, 12) + "…)";
  if (!bad.empty())
    throw std::runtime_error("ranks resolved different recipes: config_sha256 of rank 0 is " + all.substr(0, 12) +
                             "…, ranks " + bad + " differ; refusing to train (every rank must load the same recipe "
                             "files with the same --set overrides)");
}

// ---- the in-process rendezvous -----------------------------------------------------------------

struct Rendezvous {
  explicit Rendezvous(int w, double t) : world(w), timeout_s(t), here(static_cast<std::size_t>(w), false),
                                         ptrs(static_cast<std::size_t>(w), nullptr), sends(static_cast<std::size_t>(w)) {}
  const int world;
  const double timeout_s;
  std::mutex mu;
  std::condition_variable cv;
  int count = 0;
  uint64_t generation = 0;
  std::vector<bool> here;  // arrived at the current barrier
  bool aborted = false;
  std::string reason;
  // per-collective slots
  std::vector<const void*> ptrs;          // each rank's buffer
  std::vector<char> scratch;              // all-reduce result
  std::vector<std::vector<Communicator::P2P>> sends;  // [src] the sends of a group
  // Sub-communicators: a sub-rendezvous knows the world's root; the root owns every sub-rendezvous
  // (keyed by parent, split call, color) so that aborting the world aborts them all.
  std::weak_ptr<Rendezvous> root;
  std::map<std::tuple<const Rendezvous*, uint64_t, int>, std::shared_ptr<Rendezvous>> subs;

  void abort_locked(const std::string& why) {
    if (!aborted) aborted = true, reason = why;
    cv.notify_all();
  }
  // Aborts the world of `rv` (its root) and every sub-rendezvous of it (no lock held by the caller).
  static void abort_tree(const std::shared_ptr<Rendezvous>& rv, const std::string& why) {
    std::shared_ptr<Rendezvous> top = rv->root.lock();
    if (!top) top = rv;
    std::vector<std::shared_ptr<Rendezvous>> subs;
    {
      std::lock_guard<std::mutex> lk(top->mu);
      top->abort_locked(why);
      for (const auto& kv : top->subs) subs.push_back(kv.second);
    }
    for (const auto& s : subs) {
      std::lock_guard<std::mutex> lk(s->mu);
      s->abort_locked(why);
    }
    if (rv != top) {
      std::lock_guard<std::mutex> lk(rv->mu);
      rv->abort_locked(why);
    }
  }
  // All ranks meet; throws CommAborted when the world is aborted (before or while waiting) or on timeout.
  void sync(int rank, const char* what) {
    std::unique_lock<std::mutex> lk(mu);
    if (aborted) throw CommAborted(reason);
    const uint64_t gen = generation;
    here[static_cast<std::size_t>(rank)] = true;
    if (++count == world) {
      count = 0;
      std::fill(here.begin(), here.end(), false);
      ++generation;
      cv.notify_all();
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    bool timed_out = false;
    while (generation == gen && !aborted) {
      if (cv.wait_until(lk, deadline) == std::cv_status::timeout && generation == gen && !aborted) {
        timed_out = true;
        std::string missing;
        for (int q = 0; q < world; ++q)
          if (!here[static_cast<std::size_t>(q)]) missing += (missing.empty() ? "" : ",") + std::to_string(q);
        abort_locked("in-process " + std::string(what) + ": rank " + std::to_string(rank) + " waited " +
                     std::to_string(timeout_s) + " s (parallel.timeout_s) for rank(s) " + missing + " that never arrived");
      }
    }
    if (generation == gen) {
      const std::string why = reason;
      lk.unlock();
      // A sub-communicator's timeout aborts the whole world (its other ranks may wait elsewhere).
      if (timed_out) {
        if (auto top = root.lock()) {
          abort_tree(top, why);
        } else {  // this is the root: abort its sub-rendezvous
          std::vector<std::shared_ptr<Rendezvous>> ss;
          {
            std::lock_guard<std::mutex> g(mu);
            for (const auto& kv : subs) ss.push_back(kv.second);
          }
          for (const auto& x : ss) {
            std::lock_guard<std::mutex> g(x->mu);
            x->abort_locked(why);
          }
        }
      }
      throw CommAborted(why);
    }
  }
};

std::shared_ptr<Rendezvous> make_rendezvous(int world, double timeout_s) {
  if (world < 1) throw std::invalid_argument("in-process world of " + std::to_string(world) + " ranks (need >= 1)");
  return std::make_shared<Rendezvous>(world, timeout_s);
}

InProcessComm::InProcessComm(std::shared_ptr<Rendezvous> rv, int rank) : rv_(std::move(rv)), rank_(rank) {
  if (rank < 0 || rank >= rv_->world) throw std::invalid_argument("InProcessComm: rank " + std::to_string(rank) + " outside world");
}
int InProcessComm::world() const { return rv_->world; }

void InProcessComm::abort(const std::string& why) { Rendezvous::abort_tree(rv_, why); }

std::unique_ptr<Communicator> InProcessComm::do_split(int color, int key) {
  const int W = rv_->world;
  const int32_t mine[2] = {color, key};
  std::vector<int32_t> all(static_cast<std::size_t>(2 * W));
  do_all_gather(mine, all.data(), sizeof mine, DType::u8);
  std::vector<int> members;
  for (int q = 0; q < W; ++q)
    if (all[static_cast<std::size_t>(2 * q)] == color) members.push_back(q);
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
    return all[static_cast<std::size_t>(2 * a + 1)] < all[static_cast<std::size_t>(2 * b + 1)];
  });
  const int new_rank = static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
  const uint64_t id = splits_++;
  std::shared_ptr<Rendezvous> root = rv_->root.lock();
  if (!root) root = rv_;
  std::shared_ptr<Rendezvous> sub;
  {
    std::lock_guard<std::mutex> lk(root->mu);
    if (root->aborted) throw CommAborted(root->reason);
    auto& slot = root->subs[std::make_tuple(static_cast<const Rendezvous*>(rv_.get()), id, color)];
    if (!slot) {
      slot = std::make_shared<Rendezvous>(static_cast<int>(members.size()), rv_->timeout_s);
      slot->root = root;
    }
    sub = slot;
  }
  return std::make_unique<InProcessComm>(sub, new_rank);
}

namespace {
template <typename T>
void sum_rank_order(const std::vector<const void*>& ptrs, std::size_t base, std::size_t lo, std::size_t hi, T* out) {
  for (std::size_t i = lo; i < hi; ++i) {
    T acc = static_cast<const T*>(ptrs[0])[base + i];
    for (std::size_t q = 1; q < ptrs.size(); ++q) acc += static_cast<const T*>(ptrs[q])[base + i];
    out[i - lo] = acc;
  }
}
void sum_dispatch(DType t, const std::vector<const void*>& ptrs, std::size_t base, std::size_t lo, std::size_t hi, void* out) {
  if (t == DType::f32) sum_rank_order<float>(ptrs, base, lo, hi, static_cast<float*>(out));
  else if (t == DType::f64) sum_rank_order<double>(ptrs, base, lo, hi, static_cast<double*>(out));
  else throw std::invalid_argument("in-process reduction: byte buffers cannot be summed");
}
}  // namespace

void InProcessComm::do_all_reduce(void* buf, std::size_t n, DType t) {
  const std::size_t es = dtype_size(t), W = static_cast<std::size_t>(rv_->world);
  {
    std::lock_guard<std::mutex> lk(rv_->mu);
    rv_->ptrs[static_cast<std::size_t>(rank_)] = buf;
    if (rv_->scratch.size() < n * es) rv_->scratch.resize(n * es);
  }
  rv_->sync(rank_, "all_reduce");
  // Each rank sums its chunk of the elements (rank order) into the shared result.
  const std::size_t lo = n * static_cast<std::size_t>(rank_) / W, hi = n * (static_cast<std::size_t>(rank_) + 1) / W;
  sum_dispatch(t, rv_->ptrs, 0, lo, hi, rv_->scratch.data() + lo * es);
  rv_->sync(rank_, "all_reduce");
  std::memcpy(buf, rv_->scratch.data(), n * es);
  rv_->sync(rank_, "all_reduce");
}

void InProcessComm::do_reduce_scatter(const void* send, void* recv, std::size_t n, DType t) {
  const std::size_t es = dtype_size(t);
  {
    std::lock_guard<std::mutex> lk(rv_->mu);
    rv_->ptrs[static_cast<std::size_t>(rank_)] = send;
  }
  rv_->sync(rank_, "reduce_scatter");
  std::vector<char> tmp(n * es);
  sum_dispatch(t, rv_->ptrs, n * static_cast<std::size_t>(rank_), 0, n, tmp.data());
  rv_->sync(rank_, "reduce_scatter");  // every send buffer read: recv may alias send now
  std::memcpy(recv, tmp.data(), n * es);
}

void InProcessComm::do_all_gather(const void* send, void* recv, std::size_t n, DType t) {
  const std::size_t b = n * dtype_size(t);
  {
    std::lock_guard<std::mutex> lk(rv_->mu);
    rv_->ptrs[static_cast<std::size_t>(rank_)] = send;
  }
  rv_->sync(rank_, "all_gather");
  for (int q = 0; q < rv_->world; ++q)
    std::memmove(static_cast<char*>(recv) + static_cast<std::size_t>(q) * b, rv_->ptrs[static_cast<std::size_t>(q)], b);
  rv_->sync(rank_, "all_gather");
}

void InProcessComm::do_broadcast(void* buf, std::size_t bytes, int root) {
  if (root < 0 || root >= rv_->world) throw std::invalid_argument("broadcast: root " + std::to_string(root) + " outside world");
  if (rank_ == root) {
    std::lock_guard<std::mutex> lk(rv_->mu);
    rv_->ptrs[static_cast<std::size_t>(root)] = buf;
  }
  rv_->sync(rank_, "broadcast");
  if (rank_ != root && bytes) std::memcpy(buf, rv_->ptrs[static_cast<std::size_t>(root)], bytes);
  rv_->sync(rank_, "broadcast");
}

void InProcessComm::do_barrier() { rv_->sync(rank_, "barrier"); }

void InProcessComm::do_group(const std::vector<P2P>& ops) {
  {
    std::lock_guard<std::mutex> lk(rv_->mu);
    auto& mine = rv_->sends[static_cast<std::size_t>(rank_)];
    mine.clear();
    for (const auto& o : ops)
      if (o.is_send) mine.push_back(o);
  }
  rv_->sync(rank_, "send/recv");
  std::string err;
  std::vector<std::size_t> next(static_cast<std::size_t>(rv_->world), 0);  // per source: next unmatched send to me
  for (const auto& o : ops) {
    if (o.is_send) continue;
    const auto& from = rv_->sends[static_cast<std::size_t>(o.peer)];
    std::size_t& k = next[static_cast<std::size_t>(o.peer)];
    while (k < from.size() && from[k].peer != rank_) ++k;
    if (k == from.size()) {
      err = "rank " + std::to_string(rank_) + " posted a recv from rank " + std::to_string(o.peer) + " with no matching send";
      break;
    }
    if (from[k].bytes != o.bytes) {
      err = "rank " + std::to_string(rank_) + " recv of " + std::to_string(o.bytes) + " bytes from rank " + std::to_string(o.peer) +
            " matches a send of " + std::to_string(from[k].bytes) + " bytes";
      break;
    }
    if (o.bytes) std::memcpy(o.buf, from[k].buf, o.bytes);
    ++k;
  }
  if (!err.empty()) {
    abort("grouped send/recv: " + err);
    throw CommAborted("grouped send/recv: " + err);
  }
  rv_->sync(rank_, "send/recv");
}

// ---- run_ranks ---------------------------------------------------------------------------------

void run_ranks(int world, const std::function<void(Communicator&)>& fn, double timeout_s) {
  auto rv = make_rendezvous(world, timeout_s);
  std::vector<std::unique_ptr<InProcessComm>> comms;
  for (int q = 0; q < world; ++q) comms.push_back(std::make_unique<InProcessComm>(rv, q));
  std::vector<std::exception_ptr> errs(static_cast<std::size_t>(world));
  std::vector<std::string> whats(static_cast<std::size_t>(world));
  std::vector<bool> aborted(static_cast<std::size_t>(world), false);
  std::mutex first_mu;
  int first = -1;  // the first rank that failed on its own (not by abort)
  std::vector<std::thread> threads;
  for (int q = 0; q < world; ++q)
    threads.emplace_back([&, q] {
      auto& c = *comms[static_cast<std::size_t>(q)];
      try {
        fn(c);
      } catch (const CommAborted& e) {
        errs[static_cast<std::size_t>(q)] = std::current_exception();
        whats[static_cast<std::size_t>(q)] = e.what();
        aborted[static_cast<std::size_t>(q)] = true;
      } catch (const std::exception& e) {
        errs[static_cast<std::size_t>(q)] = std::current_exception();
        whats[static_cast<std::size_t>(q)] = e.what();
        {
          std::lock_guard<std::mutex> lk(first_mu);
          if (first < 0) first = q;
        }
        c.abort("rank " + std::to_string(q) + " failed: " + e.what());
      } catch (...) {
        errs[static_cast<std::size_t>(q)] = std::current_exception();
        whats[static_cast<std::size_t>(q)] = "unknown exception";
        {
          std::lock_guard<std::mutex> lk(first_mu);
          if (first < 0) first = q;
        }
        c.abort("rank " + std::to_string(q) + " failed with an unknown exception");
      }
    });
  for (auto& t : threads) t.join();
  int pick = first;
  if (pick < 0)
    for (int q = 0; q < world; ++q)
      if (errs[static_cast<std::size_t>(q)]) {
        pick = q;
        break;
      }
  if (pick < 0) return;
  if (world == 1) std::rethrow_exception(errs[0]);
  if (aborted[static_cast<std::size_t>(pick)]) throw CommAborted(whats[static_cast<std::size_t>(pick)]);
  throw std::runtime_error("rank " + std::to_string(pick) + " of " + std::to_string(world) + ": " + whats[static_cast<std::size_t>(pick)]);
}

}  // namespace megacpp
