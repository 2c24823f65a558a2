// prefetch.cpp — the background thread of Prefetcher (see prefetch.hpp).
#include "engine/data/prefetch.hpp"

#include <chrono>
#include <stdexcept>

namespace megacpp::data {

Prefetcher::Prefetcher(Produce produce, int depth)
    : produce_(std::move(produce)), depth_(static_cast<std::size_t>(depth < 1 ? 1 : depth)) {
  thread_ = std::thread([this] { run(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  space_cv_.notify_all();
  ready_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Prefetcher::run() {
  for (int64_t index = 0;; ++index) {
    std::vector<int32_t> buf;
    {
      std::unique_lock<std::mutex> lk(mu_);
      space_cv_.wait(lk, [&] { return stop_ || ready_.size() < depth_; });
      if (stop_) return;
      if (!free_.empty()) {
        buf = std::move(free_.back());
        free_.pop_back();
      }
    }
    try {
      produce_(index, buf);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      error_ = std::current_exception();
      ready_cv_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      ready_.push_back(std::move(buf));
    }
    ready_cv_.notify_one();
  }
}

double Prefetcher::take(std::vector<int32_t>& out) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lk(mu_);
  ready_cv_.wait(lk, [&] { return !ready_.empty() || error_ || stop_; });
  if (ready_.empty()) {
    if (error_) std::rethrow_exception(error_);
    throw std::logic_error("Prefetcher::take after stop");
  }
  std::swap(out, ready_.front());  // the caller's old buffer goes back to the producer
  if (ready_.front().capacity() > 0) free_.push_back(std::move(ready_.front()));
  ready_.pop_front();
  ++taken_;
  lk.unlock();
  space_cv_.notify_one();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace megacpp::data
